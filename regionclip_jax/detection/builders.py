"""Config -> detector / RPN modules, initial params, backbone weights, class text embeddings.

The only place in `detection/` that reads a config object (the modules never do). The file
readers here (`load_clip_params`, `read_embeddings`) and in `export.py` raise `InputFileError`
for a file that is missing, of another kind or of the wrong size: one line naming the file, what
was expected and what was found, which every command prints without a traceback.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.data.validation import DataError
from regionclip_jax.detection.fpn import FPNFasterRCNN, FPNRPNModel, fpn_anchor_generator
from regionclip_jax.detection.heads import OpenVocabFasterRCNN, RPNModel
from regionclip_jax.detection.settings import InferenceSettings, RoIHeadSettings, RPNSettings
from regionclip_jax.models import initializers
from regionclip_jax.models.clip import CLIP, CLIPConfig, LoadedCLIP
from regionclip_jax.models.checkpoints import CheckpointError
from regionclip_jax.models.checkpoints import embeddings as embeddings_files
from regionclip_jax.models.checkpoints.detect import REGIONCLIP_DETECTOR, describe, detect_kind
from regionclip_jax.models.clip import load as load_clip
from regionclip_jax.models.prompts import concept_embeddings
from regionclip_jax.ops.anchors import DefaultAnchorGenerator

PyTree = Any
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONVERT_HINT = "python -m regionclip_jax.tools.convert --input={path} --output=DIR"


class InputFileError(CheckpointError, DataError):
  """A checkpoint or embeddings file that is missing, of another kind or does not fit. Both a
  CheckpointError (what the checkpoint readers raise) and a DataError (what `main.py` and the
  tools print as one line, exit status 1)."""


def _check_head(head: str):
  if head not in ("c4", "fpn"):
    raise ValueError(f"{__name__}: model.head must be 'c4' or 'fpn', got {head!r}")


def build_detector(
    clip_config: CLIPConfig,
    *,
    freeze_at: int = 2,
    pooler_resolution: int = 14,
    sampling_ratio: int = 0,
    roi_chunk_size: int = 64,
    dtype: str = "float32",
    head: str = "c4",
    fpn: Optional[dict] = None,
):
  """head "c4" -> OpenVocabFasterRCNN; "fpn" -> fpn.FPNFasterRCNN, `fpn`: its extra settings
  (fpn_channels, pooler_resolution (7), canonical_box_size, fc_dim); `pooler_resolution` is C4's."""
  _check_head(head)
  if not clip_config.is_resnet:
    raise ValueError(f"{__name__}: the detector needs a CLIP ResNet (model.clip_preset)")
  backbone = CLIP(clip_config, dtype=_DTYPES[dtype], freeze_at=freeze_at)
  if head == "fpn":
    return FPNFasterRCNN(
        backbone,
        clip_config.embed_dim,
        sampling_ratio=sampling_ratio,
        roi_chunk_size=roi_chunk_size,
        dtype=_DTYPES[dtype],
        **dict(fpn or {}),
    )
  return OpenVocabFasterRCNN(
      backbone,
      pooler_resolution=pooler_resolution,
      sampling_ratio=sampling_ratio,
      roi_chunk_size=roi_chunk_size,
  )


def detector_from_config(cfg, clip_config: CLIPConfig):
  """The detector a finetune config asks for (`model.head`, default "c4"; `model.fpn`)."""
  m = cfg.model
  head = m.get("head", "c4")
  fpn = dict(m.fpn) if head == "fpn" and m.get("fpn") is not None else None
  return build_detector(
      clip_config,
      freeze_at=m.freeze_at,
      pooler_resolution=m.pooler_resolution,
      sampling_ratio=m.sampling_ratio,
      roi_chunk_size=m.roi_chunk_size,
      dtype=m.dtype,
      head=head,
      fpn=fpn,
  )


def build_rpn(
    clip_config: CLIPConfig,
    *,
    anchor_sizes=(32, 64, 128, 256, 512),
    aspect_ratios=(0.5, 1.0, 2.0),
    stride: int = 16,
    freeze_at: int = 2,
    dtype: str = "float32",
    head: str = "c4",
    fpn_channels: int = 256,
):
  """-> (RPNModel, DefaultAnchorGenerator). head "fpn": (fpn.FPNRPNModel on P2..P6, one anchor
  size per level; `stride` unused)."""
  _check_head(head)
  if head == "fpn":
    gen = fpn_anchor_generator(tuple(anchor_sizes), tuple(aspect_ratios))
    backbone = CLIP(clip_config, dtype=_DTYPES[dtype], freeze_at=freeze_at)
    return (
        FPNRPNModel(
            backbone,
            num_anchors=gen.num_anchors[0],
            fpn_channels=fpn_channels,
            dtype=_DTYPES[dtype],
        ),
        gen,
    )
  gen = DefaultAnchorGenerator(
      sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),), strides=(stride,)
  )
  backbone = CLIP(clip_config, dtype=_DTYPES[dtype], freeze_at=freeze_at)
  return RPNModel(backbone, num_anchors=gen.num_anchors[0]), gen


def numpy_init(shapes: PyTree, seed: int = 0, head_std: Optional[dict] = None) -> PyTree:
  """Random params for a tree of shapes (from `jax.eval_shape`), drawn with numpy.

  Why: jitting the CLIP initialisers (truncated normals) costs ~20 s of XLA compile on CPU even for
  the tiny preset, and a detector backbone normally comes from a checkpoint anyway. Convolution
  kernels get He-normal (fan-out, as the CLIP ResNet), dense kernels fan-in normal, frozen-BN
  `scale` / `var` ones, `bias` / `mean` zeros, other arrays N(0, 0.02). `head_std` maps a
  top-level module name to the std of its kernels (zero biases), e.g. {"bbox_pred": 0.001}.
  The rules and the drawing are `models.initializers`' (`generic_rule`, `numpy_init`).
  """
  # "sorted": jax's tree order, the order detector inits have always been drawn in
  return initializers.numpy_init(shapes, initializers.generic_rule(head_std), seed, order="sorted")


def init_detector(det: OpenVocabFasterRCNN, image_size: int, seed: int = 0) -> PyTree:
  """Random variables {'params': {'backbone': ..., 'bbox_pred': ...}} (see `numpy_init`);
  bbox_pred kernels ~ N(0, 0.001), as official."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  boxes = jax.ShapeDtypeStruct((1, 1, 4), jnp.float32)
  shapes = jax.eval_shape(det.init, jax.random.PRNGKey(0), images, boxes)
  return numpy_init(shapes, seed, {"bbox_pred": 0.001})


def init_rpn(rpn: RPNModel, image_size: int, seed: int = 0) -> PyTree:
  """Random RPN variables; head convs ~ N(0, 0.01) with zero biases, as detectron2."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(rpn.init, jax.random.PRNGKey(0), images)
  return numpy_init(shapes, seed, {"rpn_head": 0.01})


def _find_visual(tree) -> Optional[PyTree]:
  """The first subtree that holds a 'visual' key (CLIP params nested anywhere in a checkpoint)."""
  if isinstance(tree, dict):
    if "visual" in tree:
      return tree
    for v in tree.values():
      got = _find_visual(v)
      if got is not None:
        return got
  return None


def load_clip_params(path: str, source: Optional[str] = None) -> tuple[CLIPConfig, PyTree]:
  """CLIP params from any supported checkpoint (`models.clip.load`: OpenAI .pt, HF / open_clip,
  converted directory, official RegionCLIP .pth) -> (config, params without 'params' wrapper).
  A fine-tuned detector or an offline RPN file, or one that does not load, is an
  InputFileError naming what the file is."""
  try:
    if not source and os.path.isfile(path) and _is_torch_pickle(path):
      if detect_kind(path) == REGIONCLIP_DETECTOR:
        raise InputFileError(
            f"{path}: expected a CLIP checkpoint, found {describe(path)}: convert it with "
            f"`{CONVERT_HINT.format(path=path)}` and give DIR (a detector export) instead"
        )
    loaded = load_clip(path, source=source or None)
  except CheckpointError as e:
    raise InputFileError(_named(e, path)) from None
  except OSError as e:  # a reader's own error may not name the file
    raise InputFileError(_named(e, path, f"{type(e).__name__}: {e}")) from None
  return loaded.config, loaded.params


def _is_torch_pickle(path: str) -> bool:
  """Not an .npy, safetensors or TorchScript file: one whose keys `detect_kind` peeks at."""
  with open(path, "rb") as f:
    head = f.read(len(embeddings_files.NPY_MAGIC))
  return head != embeddings_files.NPY_MAGIC and not path.endswith(".safetensors")


def _named(e: Exception, path: str, text: Optional[str] = None) -> str:
  """One line of `e` that names `path`."""
  text = " ".join((text or str(e)).split())
  return text if path in text else f"{path}: {text}"


def read_embeddings(
    path: str, num_classes: Optional[int] = None, dim: Optional[int] = None
) -> np.ndarray:
  """`models.checkpoints.embeddings.read_embeddings` ([K, D] float32 from .npy / official .pth,
  K and D checked when given); its errors as InputFileError."""
  try:
    return embeddings_files.read_embeddings(path, num_classes, dim)
  except CheckpointError as e:
    raise InputFileError(_named(e, path)) from None


read_embeddings.__wrapped__ = embeddings_files.read_embeddings  # inspect.unwrap: the one reader


def with_backbone(variables: PyTree, clip_params: PyTree) -> PyTree:
  """Replace the detector's / RPN's backbone 'visual' params by a CLIP checkpoint's, checking
  every shape; checkpoint entries the model lacks (the text tower; layer4 + attnpool for an RPN,
  whose backbone stops at res4) are ignored."""
  src = _find_visual(clip_params)
  if src is None:
    raise ValueError(f"{__name__}: checkpoint params hold no 'visual' subtree")
  dst = dict(variables["params"])
  bb = dict(dst["backbone"])
  old, new = bb["visual"], src["visual"]
  ol, nl = jax.tree_util.tree_leaves_with_path(old), dict(jax.tree_util.tree_leaves_with_path(new))
  for path, leaf in ol:
    if path not in nl:
      raise ValueError(f"{__name__}: checkpoint lacks backbone param {jax.tree_util.keystr(path)}")
    if tuple(nl[path].shape) != tuple(leaf.shape):
      raise ValueError(
          f"{__name__}: backbone param {jax.tree_util.keystr(path)} has "
          f"shape {tuple(nl[path].shape)} in the checkpoint, model wants {tuple(leaf.shape)}"
      )
  bb["visual"] = jax.tree_util.tree_map_with_path(lambda p, o: jnp.asarray(nl[p], o.dtype), old)
  dst["backbone"] = bb
  return {**variables, "params": dst}


def settings_from(cls, section, **overrides):
  """A settings dataclass (detection/settings.py) from the config section keys named as its
  fields; fields the section lacks keep the dataclass default, `overrides` win. Sequences become
  tuples: settings are static under jit and must hash."""
  values = {}
  for field in dataclasses.fields(cls):
    if field.name in overrides:
      values[field.name] = overrides[field.name]
    elif field.name in section:
      v = section[field.name]
      values[field.name] = tuple(v) if isinstance(v, (list, tuple)) else v
  return cls(**values)


def rpn_settings(cfg) -> RPNSettings:
  return settings_from(RPNSettings, cfg.rpn)


def roi_settings(cfg) -> RoIHeadSettings:
  return settings_from(RoIHeadSettings, cfg.roi_heads)


def inference_settings(cfg) -> InferenceSettings:
  """`cfg.test` post-processing with the classifier temperature of `cfg.roi_heads`; configs spell
  None as "" (rpn_fusion) or () (pretrained_score_weights) so the command line can set them."""
  t = cfg.test
  weights = tuple(t.get("pretrained_score_weights", ()) or ()) or None
  if weights is not None and (len(weights) != 2 or not all(0.0 <= w <= 1.0 for w in weights)):
    raise ValueError(
        f"{__name__}: test.pretrained_score_weights must be (w_seen, "
        f"w_unseen) in [0, 1], or (), got {weights}"
    )
  return settings_from(
      InferenceSettings,
      t,
      rpn_fusion=t.rpn_fusion or None,
      temperature=cfg.roi_heads.temperature,
      pretrained_score_weights=weights,
  )


def class_embeddings(
    names: Sequence[str], clip_config: CLIPConfig, clip_params: PyTree, batch_size: int = 256
) -> np.ndarray:
  """[K, D] float32 unnormalised 81-template mean text embeddings (official concept features)."""
  loaded = LoadedCLIP(clip_config, clip_params)
  return np.asarray(
      concept_embeddings(loaded.encode_text, list(names), loaded.tokenize, batch_size), np.float32
  )
