"""Class / concept text-embedding files: `.npy` arrays and the official `.pth` tensors.

The official `tools/extract_concept_features.py` writes `torch.save(tensor [K, D])` (D = 1024 for
RN50, 640 for RN50x4; squeezed, so a one-concept file holds [D]); this project's own tool writes
`.npy`. Every reader of embeddings in the package (fine-tuning `data.*_embeddings`, zero-shot
`--embeddings`, pretraining `model.concept_embeddings`) goes through `read_embeddings`, which
tells the two apart by content, never by extension. Torch files are opened with
`weights_only=True` (`torch_files.load_weights_only`): no pickled code runs.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from regionclip_jax.models.checkpoints.errors import CheckpointError, first_line
from regionclip_jax.models.checkpoints.torch_files import (
    _tensor_to_numpy,
    import_torch,
    load_weights_only,
)

NPY_MAGIC = b"\x93NUMPY"
# class counts and widths of the released embedding files (MODEL_ZOO.md "Concept embeddings"),
# named in size errors: a file of the wrong split or backbone is the usual mistake
OFFICIAL_COUNTS = {
    17: "the COCO OVD novel classes",
    48: "the COCO OVD base classes",
    65: "all COCO OVD classes",
    80: "the COCO classes",
    866: "the LVIS base classes",
    1203: "all LVIS classes",
}
OFFICIAL_WIDTHS = {1024: "RN50", 640: "RN50x4", 768: "RN50x16 / ViT-L", 512: "RN101 / ViT-B"}


def _read_npy(path: str) -> np.ndarray:
  try:
    # allow_pickle=False: an object array would need a code-running unpickler
    return np.load(path, allow_pickle=False)
  except Exception as e:
    raise CheckpointError(f"{__name__}: {path}: unreadable .npy: {first_line(e)}") from None


def _read_torch_tensor(path: str) -> np.ndarray:
  torch = import_torch(path, "a .pth embeddings file")
  obj = load_weights_only(path, torch)
  if not isinstance(obj, torch.Tensor):
    what = type(obj).__name__
    if isinstance(obj, dict):
      what += f" with keys {list(obj)[:4]} (a checkpoint?)"
    raise CheckpointError(
        f"{__name__}: {path}: expected a tensor [K, D] saved with torch.save, found {what}"
    )
  return _tensor_to_numpy(obj)


def _size_hint(k: int, d: int, num_classes: Optional[int], dim: Optional[int]) -> str:
  """What a mismatched size says about the file: whose class count / backbone width it has."""
  notes = []
  if num_classes is not None and k != num_classes and k in OFFICIAL_COUNTS:
    notes.append(f"{k} rows = {OFFICIAL_COUNTS[k]}")
  if dim is not None and d != dim and d in OFFICIAL_WIDTHS:
    notes.append(
        f"{d}-d = {OFFICIAL_WIDTHS[d]} text embeddings, the model's are {dim}-d"
        + (f" ({OFFICIAL_WIDTHS[dim]})" if dim in OFFICIAL_WIDTHS else "")
    )
  return f" ({'; '.join(notes)})" if notes else ""


def read_embeddings(
    path: str | os.PathLike, num_classes: Optional[int] = None, dim: Optional[int] = None
) -> np.ndarray:
  """`.npy` or torch `.pth` file of text embeddings -> [K, D] float32, K = `num_classes` and
  D = `dim` when given (checked: a one-line CheckpointError names the file, expected, found)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"{__name__}: text embeddings file not found: {path}")
  with open(path, "rb") as f:
    head = f.read(len(NPY_MAGIC))
  emb = _read_npy(path) if head == NPY_MAGIC else _read_torch_tensor(path)
  if emb.ndim == 1:  # the official tool squeezes [1, D] to [D]
    emb = emb[None]
  want = f"[{'K' if num_classes is None else num_classes}, {'D' if dim is None else dim}]"
  if emb.ndim != 2:
    raise CheckpointError(
        f"{__name__}: {path}: embeddings must be {want}, found shape {tuple(emb.shape)}"
    )
  if not np.issubdtype(emb.dtype, np.floating):
    raise CheckpointError(
        f"{__name__}: {path}: embeddings must be floating point, found {emb.dtype}"
    )
  k, d = emb.shape
  if (num_classes is not None and k != num_classes) or (dim is not None and d != dim):
    raise CheckpointError(
        f"{__name__}: {path}: embeddings must be {want} (classes x embedding width), found "
        f"[{k}, {d}]{_size_hint(k, d, num_classes, dim)}"
    )
  if not np.all(np.isfinite(emb)):
    raise CheckpointError(f"{__name__}: {path}: embeddings hold NaN or inf")
  return np.ascontiguousarray(emb, np.float32)
