"""PyTorch `.pt` / `.pth` / `.bin` files read without running any of their code.

TorchScript archives (OpenAI's releases) are read by an allow-list unpickler of our own: no
PyTorch, none of the archive's code run. Every other pickle goes through
`torch.load(weights_only=True)`, which refuses pickles that would import or call anything but
tensors and containers. PyTorch is an optional dependency, imported only here and only for those
non-TorchScript pickles.
"""

from __future__ import annotations

import pickle
import zipfile
from typing import Any

import numpy as np

from regionclip_jax.models.checkpoints.errors import CheckpointError, first_line
from regionclip_jax.models.checkpoints.safetensors_io import read_safetensors


def import_torch(path: str, what: str):
  """The `torch` module, or a CheckpointError naming `path` and the pip extra that installs it."""
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


def is_torchscript(path: str) -> bool:
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
  if is_torchscript(path):
    return read_torchscript_archive(path)
  torch = import_torch(path, "a PyTorch checkpoint")
  obj = load_weights_only(path, torch)
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
  return _flatten_tensors(obj, torch)


def load_weights_only(path: str, torch) -> Any:
  """The object a torch pickle holds (a tensor, or containers of tensors), loaded with
  `weights_only=True`; refusals and corruption become one-line CheckpointErrors naming `path`."""
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
    raise CheckpointError(f"{path}: unreadable or truncated checkpoint: {first_line(e)}") from None
  return obj


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
        f"{path}: unreadable or truncated TorchScript archive: " f"{first_line(e)}"
    ) from None
  out: dict[str, np.ndarray] = {}
  _collect_arrays(root, "", out)
  if not out:
    raise CheckpointError(f"{path}: the TorchScript archive holds no tensors")
  return out


def read_weights_file(path: str) -> dict[str, Any]:
  """One weights file, by extension: `.safetensors` parsed directly, anything else as torch."""
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  return read_torch_file(path)


def peek_torch_keys(path: str) -> dict[str, None]:
  """Flattened keys of a torch pickle without copying its tensors (memory-mapped)."""
  torch = import_torch(path, "a PyTorch checkpoint")
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
