"""Which format a checkpoint is (`detect_source`), which kind of file (`detect_kind`: a CLIP, an
offline RPN, a fine-tuned detector), what it is in words for error messages (`describe`), and
where in it the weights are (`unwrap`).

Directories are told apart by their file names; single files by name, then by their keys (read
without copying tensors: the safetensors header, or a memory-mapped torch pickle).
"""

from __future__ import annotations

import os
from typing import Any

from regionclip_jax.models.checkpoints.converted import CONFIG_NAME, PARAMS_NAME
from regionclip_jax.models.checkpoints.detectron2 import is_detectron2_rpn
from regionclip_jax.models.checkpoints.errors import CheckpointError
from regionclip_jax.models.checkpoints.hf import HF_INDEXES, HF_WEIGHTS, is_hf_clip
from regionclip_jax.models.checkpoints.open_clip import OPEN_CLIP_WEIGHTS, looks_open_clip_custom
from regionclip_jax.models.checkpoints.openai import looks_openai
from regionclip_jax.models.checkpoints.regionclip import is_regionclip
from regionclip_jax.models.checkpoints.regionclip_detector import is_regionclip_detector
from regionclip_jax.models.checkpoints.safetensors_io import safetensors_header
from regionclip_jax.models.checkpoints.torch_files import is_torchscript, peek_torch_keys

SOURCES = ("openai", "hf", "open_clip", "regionclip", "converted")
# not CLIP: a detectron2 ResNet + RPN (the official offline RPNs), converted by tools/convert into an
# RPN export directory (detection/export.py)
DETECTRON2_RPN = "detectron2_rpn"
# an official RegionCLIP fine-tuned detector (CLIP ResNet trunk + text-classifier box predictor),
# converted by tools/convert into a detector export directory; as a CLIP source it is
# "regionclip" (its image tower, e.g. to initialise fine-tuning)
REGIONCLIP_DETECTOR = "regionclip_detector"


def strip_prefixes(sd: dict[str, Any]) -> dict[str, Any]:
  """Undo DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes."""
  for p in ("module.", "_orig_mod."):
    if sd and all(k.startswith(p) for k in sd):
      sd = {k[len(p) :]: v for k, v in sd.items()}
  return sd


def unwrap(sd: dict[str, Any]) -> dict[str, Any]:
  """Training checkpoints keep the weights under "state_dict" (open_clip) or "model" (detectron2)."""
  for wrapper in ("state_dict", "model"):
    sub = {k[len(wrapper) + 1 :]: v for k, v in sd.items() if k.startswith(wrapper + ".")}
    if sub and (
        is_hf_clip(sub)
        or looks_openai(strip_prefixes(sub))
        or is_regionclip(strip_prefixes(sub))
        or looks_open_clip_custom(strip_prefixes(sub))
    ):
      return strip_prefixes(sub)
  return strip_prefixes(sd)


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
    return source_from_keys(dict.fromkeys(safetensors_header(path)[0]), path)
  if is_torchscript(path):
    return "openai"
  return source_from_keys(peek_torch_keys(path), path)


def detect_kind(path: str | os.PathLike) -> str:
  """DETECTRON2_RPN for an offline-RPN file, REGIONCLIP_DETECTOR for a fine-tuned RegionCLIP
  detector, else the CLIP format (`detect_source`)."""
  path = os.fspath(path)
  if os.path.isfile(path) and not path.endswith(".safetensors") and not is_torchscript(path):
    keys = _model_keys(peek_torch_keys(path))
    if is_regionclip_detector(keys):
      return REGIONCLIP_DETECTOR
    if is_detectron2_rpn(keys):
      return DETECTRON2_RPN
  return detect_source(path)


def describe(path: str | os.PathLike) -> str:
  """What `path` holds, as a phrase for "expected ..., found ..." messages (never raises):
  an official offline RPN (C4 / FPN), a fine-tuned detector, a pretrained RegionCLIP / CLIP
  checkpoint, a bare tensor or .npy array (an embeddings file), a converted directory."""
  path = os.fspath(path)
  if os.path.isdir(path):
    files = set(os.listdir(path))
    if CONFIG_NAME in files and PARAMS_NAME in files:
      return "a converted CLIP directory"
    return "a directory"
  if not os.path.isfile(path):
    return "no file"
  with open(path, "rb") as f:
    if f.read(6) == b"\x93NUMPY":
      return "an .npy array (a class-embeddings file)"
  try:
    if path.endswith(".safetensors") or is_torchscript(path):
      return f"a CLIP checkpoint ({detect_source(path)} format)"
    keys = _model_keys(peek_torch_keys(path))
  except CheckpointError:
    return "a file that is no checkpoint"
  if keys == [""]:
    return "a bare tensor (a class-embeddings file)"
  if is_regionclip_detector(keys):
    return "a fine-tuned RegionCLIP detector (roi_heads.box_predictor.*)"
  if is_detectron2_rpn(keys):
    fpn = "backbone.bottom_up.stem.conv1.weight" in set(keys)
    return (
        "an offline RPN (detectron2 R-50-FPN, the layout of rpn_lvis_866.pth)"
        if fpn
        else "an offline RPN (detectron2 R-50-C4, the layout of rpn_coco_48.pth)"
    )
  if is_regionclip(keys):
    return "a pretrained RegionCLIP checkpoint (backbone.*, no box predictor)"
  try:
    return f"a CLIP checkpoint ({source_from_keys(dict.fromkeys(keys), path)} format)"
  except CheckpointError:
    return f"an unrecognised checkpoint (first keys: {keys[:3]})"


def _model_keys(sd: dict) -> list[str]:
  """Keys under detectron2's "model" wrapper when there is one."""
  sub = [k[len("model.") :] for k in sd if k.startswith("model.")]
  return sub or list(sd)


def source_from_keys(sd: dict, path: str) -> str:
  """The format of a single file from its flattened keys (values unused)."""
  if is_detectron2_rpn(_model_keys(sd)):
    raise CheckpointError(
        f"{__name__}: {path}: expected a CLIP checkpoint, found a detectron2 RPN (an offline RPN: "
        "backbone.*, proposal_generator.rpn_head.*): give it as the RPN (--rpn, rpn.checkpoint, "
        "proposals.rpn_checkpoint), as it is or converted by tools.convert"
    )
  if list(sd) == [""]:
    raise CheckpointError(
        f"{__name__}: {path}: expected a checkpoint, found a bare tensor (a class-embeddings file: "
        "--embeddings, data.*_embeddings, model.concept_embeddings)"
    )
  keys = list(unwrap(sd))
  if is_hf_clip(keys):
    return "hf"
  if is_regionclip(keys):
    return "regionclip"
  if (
      any(k.startswith("state_dict.") for k in sd)
      or any(k.startswith("module.") for k in sd)
      or any(k.startswith("text.") for k in keys)
  ):
    return "open_clip"
  if looks_openai(keys):
    return "openai"
  raise CheckpointError(f"{path}: no CLIP weights recognised (first keys: {keys[:5]})")
