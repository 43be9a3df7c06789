"""Read CLIP checkpoints of every public format into one OpenAI-named numpy state dict, and load
them as a `LoadedCLIP`.

Formats (`source`):
- "openai": OpenAI `.pt` (TorchScript archive, or a plain `torch.save`d state dict).
- "hf": transformers `CLIPModel` (directory with `config.json` + `model.safetensors` /
  `pytorch_model.bin`, sharded or not, or one of those files).
- "open_clip": `open_clip_model.safetensors` / `open_clip_pytorch_model.bin` (+ optional
  `open_clip_config.json`), or an open_clip training checkpoint (`{"state_dict": ...}`,
  `module.` prefixes).
- "regionclip": a RegionCLIP detectron2 `.pth` (`{"model": ...}` with `backbone.*`,
  `teacher_backbone.*`, `lang_encoder.*`).
- "converted": a directory written by `save_converted` / `tools/convert.py`
  (`config.json` + `params.safetensors`), read without PyTorch.

Safety: pickles are only ever opened with `torch.load(weights_only=True)`, and TorchScript
archives with an allow-list unpickler of our own (no PyTorch, none of the archive's code run): a
checkpoint whose pickle would import or call arbitrary code is refused. PyTorch is needed only for
non-TorchScript `.pt/.pth/.bin` pickles; safetensors, TorchScript and converted directories read
without it.

Layout: low-level readers (safetensors, TorchScript, torch pickles) -> per-format renaming to
OpenAI names (`hf_names`, `regionclip_names`, open_clip below) -> `read_state_dict` / `load`,
and the converted directory format (`save_converted` / `read_converted`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

from regionclip_jax.models import hf_names, regionclip_names

SOURCES = ("openai", "hf", "open_clip", "regionclip", "converted")
CONVERTED_FORMAT = "regionclip_jax.clip"
CONVERTED_VERSION = 1
CONFIG_NAME = "config.json"
PARAMS_NAME = "params.safetensors"

OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_CONFIG = "open_clip_config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# Entries that are not weights: OpenAI's TorchScript extras, BN counters, masks, HF position ids.
_DROP_SUFFIXES = ("num_batches_tracked", "attn_mask", "position_ids")
_DROP_KEYS = {"input_resolution", "context_length", "vocab_size"}


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not fit; the message names the file and the key."""


# ---------------------------------------------------------------------------------------------
# low-level readers
# ---------------------------------------------------------------------------------------------
def _import_torch(path: str, what: str):
  try:
    import torch  # optional dependency: only .pt/.pth/.bin files need it
  except ImportError:
    raise CheckpointError(
        f"{path}: reading {what} needs PyTorch (CPU is enough); install it with "
        "`pip install regionclip_jax[torch]`"
    ) from None
  return torch


def _tensor_to_numpy(t) -> np.ndarray:
  t = t.detach().cpu()
  if not t.dtype.is_floating_point and not t.dtype.is_complex:
    return t.numpy()
  if t.dtype.itemsize < 4:  # fp16 / bf16 (numpy has no bf16): widen once, here
    t = t.float()
  return t.numpy()


def _flatten_tensors(obj, torch, prefix="") -> dict[str, Any]:
  """Nested dicts of tensors -> flat dict; non-tensor leaves (ints, strings) are dropped."""
  out = {}
  if isinstance(obj, torch.Tensor):
    out[prefix.rstrip(".")] = _tensor_to_numpy(obj)
  elif isinstance(obj, dict):
    for k, v in obj.items():
      out.update(_flatten_tensors(v, torch, f"{prefix}{k}."))
  elif isinstance(obj, np.ndarray):
    out[prefix.rstrip(".")] = obj
  return out


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


def _safetensors_header(path: str) -> tuple[dict, int]:
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
  header, offset = _safetensors_header(path)
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


def _is_torchscript(path: str) -> bool:
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
  return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_torch_file(path: str) -> dict[str, Any]:
  """A `.pt/.pth/.bin` file -> flat dict of numpy arrays (nested dicts joined with '.').

  TorchScript archives (OpenAI's releases) are read by `read_torchscript_archive`, without
  PyTorch and without running any of their code; every other pickle goes through
  `torch.load(weights_only=True)`, which refuses pickles that would import or call anything
  but tensors and containers.
  """
  if _is_torchscript(path):
    return read_torchscript_archive(path)
  torch = _import_torch(path, "a PyTorch checkpoint")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    text = str(e)
    i = text.find("WeightsUnpickler error:")
    if i >= 0:
      detail = " ".join(text[i + len("WeightsUnpickler error:") :].split())
      detail = detail.split(" Please use")[0].split(" Check the documentation")[0][:200]
      if "Unsupported global" in detail:
        raise CheckpointError(
            f"{path}: refused to unpickle: it would import or call code that is not a tensor "
            f"or container (weights_only=True): {detail}"
        ) from None
      raise CheckpointError(
          f"{path}: unreadable, or not a weights-only PyTorch pickle "
          f"(refused with weights_only=True): {detail}"
      ) from None
    raise CheckpointError(f"{path}: unreadable or truncated checkpoint: {_first_line(e)}") from None
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
  return _flatten_tensors(obj, torch)


# --- TorchScript archives, read with an allow-list unpickler -----------------------------------
# `torch.jit.load` would compile the archive's code and run its `__setstate__` methods; the weights
# only need the pickle `data.pkl` (module objects holding attribute dicts) and the raw storages
# under `data/`. This unpickler builds inert stand-ins for TorchScript classes and refuses every
# other global, so a crafted archive can neither import nor call anything.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bf16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _ScriptObject:
  """Stand-in for a TorchScript module / class instance: keeps its pickled attribute dict."""

  def __setstate__(self, state):
    self.state = state


class _StorageType:

  def __init__(self, dtype):
    self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *_):
  size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
  if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
    raise CheckpointError(f"invalid tensor layout (offset {offset}, size {size}, stride {stride})")
  last = (
      offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
      if all(size)
      else offset - 1
  )
  if last >= storage.size:
    raise CheckpointError(f"tensor of size {size} reads past its storage ({storage.size} elements)")
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size, strides=[st * storage.itemsize for st in stride]
  )
  return np.array(view)


def _identity_first(*args):
  return args[0] if args else None


class _ArchiveUnpickler(pickle.Unpickler):

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, where: str):
    super().__init__(file)
    self._archive, self._prefix, self._where = archive, prefix, where
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if module == "__torch__" or module.startswith("__torch__."):
      return _ScriptObject
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _identity_first
    if module == "torch.jit._pickle" and name.startswith(("build_", "restore_type_tag")):
      return _identity_first
    if module == "collections" and name == "OrderedDict":
      return dict
    raise CheckpointError(
        f"{self._where}: refused to unpickle: the TorchScript archive "
        f"references {module}.{name}, which is not a weight container"
    )

  def persistent_load(self, pid):
    if not (
        isinstance(pid, tuple)
        and len(pid) >= 4
        and pid[0] == "storage"
        and isinstance(pid[1], _StorageType)
    ):
      raise CheckpointError(f"{self._where}: unsupported storage reference {pid!r:.80}")
    kind, key = pid[1], str(pid[2])
    if key not in self._storages:
      try:
        raw = self._archive.read(f"{self._prefix}/data/{key}")
      except KeyError:
        raise CheckpointError(
            f"{self._where}: storage data/{key} missing from the archive"
        ) from None
      if kind.dtype == "bf16":
        arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
      else:
        arr = np.frombuffer(raw, kind.dtype)
      self._storages[key] = arr
    return self._storages[key]


def _collect_arrays(obj, prefix: str, out: dict):
  if isinstance(obj, _ScriptObject):
    obj = getattr(obj, "state", {})
  if isinstance(obj, np.ndarray):
    out[prefix.rstrip(".")] = obj
  elif isinstance(obj, dict):
    for k, v in obj.items():
      _collect_arrays(v, f"{prefix}{k}.", out)
  elif isinstance(obj, (list, tuple)) and len(obj) == 2 and isinstance(obj[0], dict):
    _collect_arrays(obj[0], prefix, out)  # (state dict, training flag) style states


def read_torchscript_archive(path: str) -> dict[str, np.ndarray]:
  """Weights of a TorchScript archive as a flat {dotted attribute name: array} dict.

  No PyTorch needed and no archive code run. Every tensor attribute of every module appears
  (parameters, buffers and tensor attributes alike); callers drop the non-weights by name.
  """
  try:
    with zipfile.ZipFile(path) as z:
      pkl = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
      if not pkl:
        raise CheckpointError(f"{path}: TorchScript archive without data.pkl")
      prefix = pkl[0].split("/")[0]
      with z.open(pkl[0]) as f:
        root = _ArchiveUnpickler(f, z, prefix, path).load()
  except CheckpointError as e:
    if str(e).startswith(path):
      raise
    raise CheckpointError(f"{path}: {e}") from None
  except Exception as e:  # zip / pickle corruption of any kind
    raise CheckpointError(
        f"{path}: unreadable or truncated TorchScript archive: " f"{_first_line(e)}"
    ) from None
  out: dict[str, np.ndarray] = {}
  _collect_arrays(root, "", out)
  if not out:
    raise CheckpointError(f"{path}: the TorchScript archive holds no tensors")
  return out


def _first_line(e: Exception) -> str:
  """`Type: first sentence` of an exception (library messages run to paragraphs)."""
  lines = str(e).strip().splitlines()
  first = lines[0] if lines else ""
  cut = first.find(". ", 20)
  return f"{type(e).__name__}: {first[:cut + 1] if cut > 0 else first}"[:300]


def _read_weights_file(path: str) -> dict[str, Any]:
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  return read_torch_file(path)


# ---------------------------------------------------------------------------------------------
# normalisation of the different layouts to OpenAI names
# ---------------------------------------------------------------------------------------------
def _strip_prefixes(sd: dict[str, Any]) -> dict[str, Any]:
  """Undo DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes."""
  for p in ("module.", "_orig_mod."):
    if sd and all(k.startswith(p) for k in sd):
      sd = {k[len(p) :]: v for k, v in sd.items()}
  return sd


def _unwrap(sd: dict[str, Any]) -> dict[str, Any]:
  """Training checkpoints keep the weights under "state_dict" (open_clip) or "model" (detectron2)."""
  for wrapper in ("state_dict", "model"):
    sub = {k[len(wrapper) + 1 :]: v for k, v in sd.items() if k.startswith(wrapper + ".")}
    if sub and (
        hf_names.is_hf_clip(sub)
        or _looks_openai(_strip_prefixes(sub))
        or regionclip_names.is_regionclip(_strip_prefixes(sub))
        or _looks_open_clip_custom(_strip_prefixes(sub))
    ):
      return _strip_prefixes(sub)
  return _strip_prefixes(sd)


def _looks_openai(sd) -> bool:
  return any(k.startswith("visual.") for k in sd) and "token_embedding.weight" in sd


def _looks_open_clip_custom(sd) -> bool:
  return any(k.startswith("text.") for k in sd) and any(k.startswith("visual.") for k in sd)


def _open_clip_to_openai(sd: dict[str, Any], where: str) -> dict[str, Any]:
  """open_clip CLIP / CustomTextCLIP keys -> OpenAI keys (open_clip keeps OpenAI's names;
  CustomTextCLIP moves the text tower under `text.`)."""
  out = {}
  for k, v in sd.items():
    if k.startswith("text."):
      k = k[len("text.") :]
      if k == "text_projection.weight":  # a Linear projection: [D, W] -> [W, D]
        out["text_projection"] = np.ascontiguousarray(np.asarray(v).T)
        continue
      if k == "text_projection.bias":
        raise CheckpointError(
            f"{where}: open_clip text projection with a bias "
            "(text.text_projection.bias) is not supported"
        )
    if k == "logit_bias":
      continue  # SigLIP-style loss bias, not part of the encoders
    out[k] = v
  unsupported = [
      k
      for k in out
      if k.startswith(
          (
              "visual.trunk.",
              "transformer.embeddings.",
              "visual.attn_pool.",
              "text_decoder.",
              "text.",
          )
      )
      or ".ls_1." in k
      or ".ls_2." in k
  ]
  if unsupported:
    raise CheckpointError(
        f"{where}: open_clip architecture not supported by our CLIP "
        f"(key {unsupported[0]!r}: timm/HF towers, CoCa, LayerScale)"
    )
  return out


def _finalise(sd: dict[str, Any]) -> dict[str, np.ndarray]:
  """Drop non-weight entries, float arrays to float32, logit_scale to a scalar."""
  out = {}
  for k, v in sd.items():
    if k in _DROP_KEYS or k.endswith(_DROP_SUFFIXES):
      continue
    v = np.asarray(v)
    if np.issubdtype(v.dtype, np.floating):
      v = v.astype(np.float32, copy=False)
    out[k] = v
  if "logit_scale" in out:
    out["logit_scale"] = out["logit_scale"].reshape(())
  return out


def _open_clip_hints(cfg: dict) -> dict:
  """Facts that shapes do not tell, from open_clip's `open_clip_config.json` / model config."""
  model_cfg = cfg.get("model_cfg", cfg)
  vision = model_cfg.get("vision_cfg", {}) or {}
  text = model_cfg.get("text_cfg", {}) or {}
  hints = {"activation": "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"}
  if "heads" in text:
    hints["text_heads"] = int(text["heads"])
  if isinstance(vision.get("layers"), int) and "width" in vision:  # ViT tower
    hints["vision_heads"] = int(vision["width"]) // int(vision.get("head_width", 64))
  return hints


# ---------------------------------------------------------------------------------------------
# format detection
# ---------------------------------------------------------------------------------------------
def detect_source(path: str | os.PathLike) -> str:
  """Guess the format of `path` (one of SOURCES) from file names and, if needed, its keys."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f"checkpoint not found: {path}")
  if os.path.isdir(path):
    files = set(os.listdir(path))
    if CONFIG_NAME in files and PARAMS_NAME in files:
      return "converted"
    if files & set(OPEN_CLIP_WEIGHTS):
      return "open_clip"
    if files & (set(HF_WEIGHTS) | set(HF_INDEXES)):
      return "hf"
    raise CheckpointError(
        f"{path}: directory holds no known checkpoint (expected "
        f"{PARAMS_NAME}, {' / '.join(OPEN_CLIP_WEIGHTS)} or {' / '.join(HF_WEIGHTS)})"
    )
  base = os.path.basename(path)
  if base in OPEN_CLIP_WEIGHTS:
    return "open_clip"
  if base == PARAMS_NAME and os.path.exists(os.path.join(os.path.dirname(path), CONFIG_NAME)):
    return "converted"
  if path.endswith(".safetensors"):
    return _source_from_keys(dict.fromkeys(_safetensors_header(path)[0]), path)
  if _is_torchscript(path):
    return "openai"
  return _source_from_keys(_peek_torch_keys(path), path)


def _peek_torch_keys(path: str) -> dict[str, None]:
  """Flattened keys of a torch pickle without copying its tensors (memory-mapped)."""
  torch = _import_torch(path, "a PyTorch checkpoint")
  if not zipfile.is_zipfile(path):  # legacy format cannot be mapped: read it whole
    return dict.fromkeys(read_torch_file(path))
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except Exception:  # let the full reader produce the precise error
    return dict.fromkeys(read_torch_file(path))
  keys: dict[str, None] = {}

  def walk(o, prefix):
    if isinstance(o, torch.Tensor):
      keys[prefix.rstrip(".")] = None
    elif isinstance(o, dict):
      for k, v in o.items():
        walk(v, f"{prefix}{k}.")

  walk(obj, "")
  return keys


def _source_from_keys(sd: dict, path: str) -> str:
  keys = list(_unwrap(sd))
  if hf_names.is_hf_clip(keys):
    return "hf"
  if regionclip_names.is_regionclip(keys):
    return "regionclip"
  if (
      any(k.startswith("state_dict.") for k in sd)
      or any(k.startswith("module.") for k in sd)
      or any(k.startswith("text.") for k in keys)
  ):
    return "open_clip"
  if _looks_openai(keys):
    return "openai"
  raise CheckpointError(f"{path}: no CLIP weights recognised (first keys: {keys[:5]})")


# ---------------------------------------------------------------------------------------------
# public readers
# ---------------------------------------------------------------------------------------------
def _read(path: str, source: str | None, part: str, text_from) -> tuple[dict, str, dict]:
  path = os.fspath(path)
  if source is None:
    source = detect_source(path)
  if source not in SOURCES:
    raise CheckpointError(f"{path}: unknown source {source!r}; expected one of {SOURCES}")
  if not os.path.exists(path):
    raise CheckpointError(f"checkpoint not found: {path}")
  hints: dict = {}
  if source == "converted":
    raise CheckpointError(
        f"{path}: a converted directory holds Flax params, not a state dict; "
        "use checkpoints.load (or read_converted)"
    )
  if source == "hf":
    raw, cfg = _read_hf(path)
    if cfg:
      hints = hf_names.hints_from_hf_config(cfg)
    try:
      sd = hf_names.hf_to_openai(_unwrap(raw), where=path)
    except ValueError as e:
      raise CheckpointError(str(e)) from None
  elif source == "open_clip":
    weights, cfg_path = _open_clip_files(path)
    sd = _open_clip_to_openai(_unwrap(_read_weights_file(weights)), where=weights)
    if cfg_path:
      with open(cfg_path, encoding="utf-8") as f:
        hints = _open_clip_hints(json.load(f))
    path = weights
  elif source == "regionclip":
    raw = _unwrap(_read_weights_file(path))
    try:
      sd = regionclip_names.regionclip_to_openai(raw, part=part, where=path)
    except ValueError as e:
      raise CheckpointError(str(e)) from None
    if not regionclip_names.has_text_tower(raw):
      if text_from is None:
        raise CheckpointError(
            f"{path}: no text tower (lang_encoder.*), e.g. a fine-tuned detector; pass "
            "text_from=<a CLIP or RegionCLIP pretraining checkpoint> to take it from there"
        )
      text_sd, _ = read_state_dict(text_from)
      sd.update(
          {k: v for k, v in text_sd.items() if not k.startswith("visual.") and k != "logit_scale"}
      )
  else:  # openai
    sd = _unwrap(_read_weights_file(path))
    if not _looks_openai(sd):
      raise CheckpointError(
          f"{path}: not an OpenAI CLIP state dict (no visual.* / "
          f"token_embedding.weight; first keys: {list(sd)[:5]})"
      )
  return _finalise(sd), source, hints


def read_state_dict(
    path: str | os.PathLike,
    source: str | None = None,
    *,
    part: str = "student",
    text_from: str | os.PathLike | None = None,
) -> tuple[dict[str, np.ndarray], str]:
  """Any supported checkpoint -> (OpenAI-named numpy state dict, detected source).

  `part` (RegionCLIP only): "student" (`backbone.*`) or "teacher" (`teacher_backbone.*`).
  `text_from`: a second checkpoint supplying the text tower when `path` has none (a RegionCLIP
  fine-tuned detector).
  """
  sd, source, _ = _read(os.fspath(path), source, part, text_from)
  return sd, source


def _read_hf(path: str) -> tuple[dict, dict | None]:
  cfg = None
  if os.path.isdir(path):
    cfg_file = os.path.join(path, "config.json")
    if os.path.exists(cfg_file):
      with open(cfg_file, encoding="utf-8") as f:
        cfg = json.load(f)
    for index in HF_INDEXES:  # sharded checkpoints
      if os.path.exists(os.path.join(path, index)):
        with open(os.path.join(path, index), encoding="utf-8") as f:
          shards = sorted(set(json.load(f)["weight_map"].values()))
        sd = {}
        for shard in shards:
          sd.update(_read_weights_file(os.path.join(path, shard)))
        return sd, cfg
    for name in HF_WEIGHTS:
      if os.path.exists(os.path.join(path, name)):
        return _read_weights_file(os.path.join(path, name)), cfg
    raise CheckpointError(f"{path}: no {' / '.join(HF_WEIGHTS)} in this HF directory")
  cfg_file = os.path.join(os.path.dirname(path), "config.json")
  if os.path.exists(cfg_file):
    with open(cfg_file, encoding="utf-8") as f:
      cfg = json.load(f)
  return _read_weights_file(path), cfg


def _open_clip_files(path: str) -> tuple[str, str | None]:
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  weights = path
  if os.path.isdir(path):
    found = [
        os.path.join(path, n) for n in OPEN_CLIP_WEIGHTS if os.path.exists(os.path.join(path, n))
    ]
    if not found:
      raise CheckpointError(f"{path}: no {' / '.join(OPEN_CLIP_WEIGHTS)} in this directory")
    weights = found[0]  # safetensors first: no pickle at all
  cfg = os.path.join(folder, OPEN_CLIP_CONFIG)
  return weights, (cfg if os.path.exists(cfg) else None)


# ---------------------------------------------------------------------------------------------
# config fitting and loading
# ---------------------------------------------------------------------------------------------
def architecture_of(sd: dict) -> str:
  """ "resnet" or "vit" from OpenAI-named keys."""
  if "visual.proj" in sd or "visual.class_embedding" in sd:
    return "vit"
  if any(k.startswith("visual.layer1.") for k in sd):
    return "resnet"
  raise CheckpointError(
      "state dict has no recognisable image tower (no visual.proj nor " "visual.layer1.*)"
  )


def _apply_hints(config, hints: dict, where: str):
  """Set what shapes cannot tell (heads); refuse what our CLIP cannot compute."""
  act = hints.get("activation", "quick_gelu")
  if act != "quick_gelu":
    raise CheckpointError(
        f"{where}: the model uses activation {act!r}; our CLIP implements "
        "QuickGELU only (OpenAI-style weights)"
    )
  eps = hints.get("layer_norm_eps", 1e-5)
  if not isinstance(eps, float) or abs(eps - 1e-5) > 1e-12:
    raise CheckpointError(f"{where}: layer_norm_eps {eps} is not supported (ours is 1e-5)")
  if "text_heads" in hints:
    config = dataclasses.replace(
        config, text=dataclasses.replace(config.text, heads=hints["text_heads"])
    )
  if "vision_heads" in hints and not config.is_resnet:
    config = dataclasses.replace(
        config, vision=dataclasses.replace(config.vision, heads=hints["vision_heads"])
    )
  return config


def load(
    path: str | os.PathLike,
    source: str | None = None,
    *,
    arch: str | None = None,
    config=None,
    part: str = "student",
    text_from=None,
    dtype=None,
):
  """Any supported checkpoint (or converted directory) -> `clip.LoadedCLIP`.

  Args:
    source: one of SOURCES; detected when None.
    arch: "resnet" / "vit" to assert the image tower kind (clear error otherwise).
    config: a `CLIPConfig` to load into instead of the inferred one; a mismatch raises naming
      the parameter and both shapes.
    part, text_from: see `read_state_dict` (RegionCLIP).
    dtype: compute dtype of the returned model (float32 by default).
  """
  import jax.numpy as jnp

  from regionclip_jax.models import clip as clip_lib  # lazy: clip.load imports this module

  path = os.fspath(path)
  dtype = jnp.float32 if dtype is None else dtype
  if arch not in (None, "resnet", "vit"):
    raise CheckpointError(f"{path}: arch must be 'resnet' or 'vit', got {arch!r}")
  if (source or detect_source(path)) == "converted":
    cfg, params = read_converted(path)
    found = "resnet" if cfg.is_resnet else "vit"
    if arch and arch != found:
      raise CheckpointError(f"{path}: holds a {found} CLIP, but arch={arch!r} was requested")
    if config is not None and config != cfg:
      raise CheckpointError(f"{path}: converted config {cfg} differs from the requested {config}")
    return clip_lib.LoadedCLIP(cfg, params, dtype)

  sd, source, hints = _read(path, source, part, text_from)
  found = architecture_of(sd)
  if arch and arch != found:
    raise CheckpointError(
        f"{path}: holds a {found} CLIP ({source} checkpoint), but " f"arch={arch!r} was requested"
    )
  if config is None:
    try:
      config = clip_lib.config_from_state_dict(sd)
    except (KeyError, ValueError) as e:
      raise CheckpointError(f"{path}: cannot infer the CLIP architecture: {e}") from None
    config = _apply_hints(config, hints, path)
    if config.text.heads < 1 or (not config.is_resnet and config.vision.heads < 1):
      raise CheckpointError(
          f"{path}: cannot infer the number of attention heads (width < 64 "
          "and no config file such as config.json beside the weights)"
      )
  else:
    want = "resnet" if config.is_resnet else "vit"
    if want != found:
      raise CheckpointError(f"{path}: holds a {found} CLIP, but the given config is a {want}")
  try:
    params = clip_lib.params_from_state_dict(sd, config)
  except (KeyError, ValueError) as e:
    raise CheckpointError(f"{path}: {_one_line(e)}") from None
  return clip_lib.LoadedCLIP(config, params, dtype)


def _one_line(e: Exception) -> str:
  """First problem of a multi-line report, with the count of the others."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  if len(lines) <= 1:
    return lines[0] if lines else type(e).__name__
  rest = len(lines) - 2
  return f"{lines[0]} {lines[1]}" + (f" (and {rest} more)" if rest > 0 else "")


# ---------------------------------------------------------------------------------------------
# the converted format
# ---------------------------------------------------------------------------------------------
def _flatten_params(tree, prefix="", leaf=np.asarray) -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flatten_params(v, key + "/", leaf))
    else:
      out[key] = leaf(v)
  return out


def _unflatten_params(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for key, v in flat.items():
    node = tree
    parts = key.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return tree


def save_converted(out_dir: str | os.PathLike, config, params, source: str = "unknown") -> str:
  """Write `config.json` + `params.safetensors` (flattened Flax paths, '/'-joined)."""
  from safetensors.numpy import save_file

  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  # np.array, not ascontiguousarray: the latter turns 0-d arrays (logit_scale) into shape (1,)
  flat = {k: np.array(v, order="C") for k, v in _flatten_params(params).items()}
  save_file(flat, os.path.join(out_dir, PARAMS_NAME), metadata={"format": CONVERTED_FORMAT})
  meta = {
      "format": CONVERTED_FORMAT,
      "version": CONVERTED_VERSION,
      "source": source,
      "config": config.to_dict(),
  }
  with open(os.path.join(out_dir, CONFIG_NAME), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  return out_dir


def read_converted(path: str | os.PathLike):
  """A converted directory -> (CLIPConfig, params tree of numpy arrays). No PyTorch needed."""
  from regionclip_jax.models import clip as clip_lib

  path = os.fspath(path)
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  cfg_file = os.path.join(folder, CONFIG_NAME)
  try:
    with open(cfg_file, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{cfg_file}: unreadable converted config ({e})") from None
  if meta.get("format") != CONVERTED_FORMAT or "config" not in meta:
    raise CheckpointError(
        f"{cfg_file}: not a regionclip_jax converted checkpoint " f"(format={meta.get('format')!r})"
    )
  if meta.get("version", 0) > CONVERTED_VERSION:
    raise CheckpointError(
        f"{cfg_file}: written by a newer regionclip_jax (version "
        f"{meta['version']} > {CONVERTED_VERSION})"
    )
  try:
    config = clip_lib.CLIPConfig.from_dict(meta["config"])
  except ValueError as e:
    raise CheckpointError(f"{cfg_file}: {e}") from None
  flat = read_safetensors(os.path.join(folder, PARAMS_NAME))
  params = _unflatten_params(flat)
  _check_tree(params, clip_lib.param_shapes(config), os.path.join(folder, PARAMS_NAME))
  return config, params


def _check_tree(params, shapes, where: str):
  got = {k: v.shape for k, v in _flatten_params(params).items()}
  want = {k: tuple(v.shape) for k, v in _flatten_params(shapes, leaf=lambda x: x).items()}
  missing = sorted(set(want) - set(got))
  if missing:
    raise CheckpointError(
        f"{where}: missing parameter {missing[0]} (shape {want[missing[0]]})"
        + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    )
  extra = sorted(set(got) - set(want))
  if extra:
    raise CheckpointError(f"{where}: unexpected parameter {extra[0]} (shape {got[extra[0]]})")
  for k in sorted(want):
    if tuple(got[k]) != want[k]:
      raise CheckpointError(
          f"{where}: parameter {k} has shape {tuple(got[k])}, the config " f"expects {want[k]}"
      )
