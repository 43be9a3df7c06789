"""`.safetensors` files read directly with numpy: no framework, no pickle, bf16 widened."""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from regionclip_jax.models.checkpoints.errors import CheckpointError

_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def safetensors_header(path: str) -> tuple[dict, int]:
  """(header dict, byte offset of the data) of a `.safetensors` file; one-line errors."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise CheckpointError(f"{path}: not a safetensors file (only {len(head)} bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8 or n > 100_000_000:
      raise CheckpointError(
          f"{path}: unreadable safetensors header (header length {n}, "
          f"file size {size}): truncated or not a safetensors file"
      )
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from None
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: unreadable safetensors header (not a JSON object)")
  return header, 8 + n


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Numpy arrays of a `.safetensors` file (bf16 widened to float32), no framework needed.

  Parsed directly (memory-mapped, one copy per tensor) so that truncated files give a clear
  error and bf16 needs neither torch nor jax.
  """
  header, offset = safetensors_header(path)
  size = os.path.getsize(path)
  data = (
      np.memmap(path, dtype=np.uint8, mode="r", offset=offset)
      if size > offset
      else np.zeros(0, np.uint8)
  )
  out = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    start, end = info["data_offsets"]
    if end > data.size or start > end:
      raise CheckpointError(
          f"{path}: truncated safetensors file (tensor {key!r} needs bytes "
          f"up to {end + offset}, file has {size})"
      )
    dt = info["dtype"]
    raw = data[start:end]
    shape = tuple(info["shape"])
    if dt == "BF16":
      # bf16 is the top half of a float32
      arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif dt in _ST_DTYPES:
      arr = np.array(raw.view(_ST_DTYPES[dt]))
    else:
      raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {dt}")
    if arr.size != int(np.prod(shape)):
      raise CheckpointError(
          f"{path}: tensor {key!r} holds {arr.size} values, shape {shape} needs "
          f"{int(np.prod(shape))}"
      )
    out[key] = arr.reshape(shape)
  del data
  return out
