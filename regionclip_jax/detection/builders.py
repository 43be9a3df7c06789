"""Config -> detector / RPN modules, initial params, backbone weights, class text embeddings.

The only place in `detection/` that reads a config object (the modules never do).
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.detection.fpn import FPNFasterRCNN, FPNRPNModel, fpn_anchor_generator
from regionclip_jax.detection.heads import OpenVocabFasterRCNN, RPNModel
from regionclip_jax.detection.settings import InferenceSettings, RoIHeadSettings, RPNSettings
from regionclip_jax.models.clip import CLIP, CLIPConfig
from regionclip_jax.ops.anchors import DefaultAnchorGenerator

PyTree = Any
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _check_head(head: str):
  if head not in ("c4", "fpn"):
    raise ValueError(f"detection/builders.py: model.head must be 'c4' or 'fpn', got {head!r}")


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
    raise ValueError("detection/builders.py: the detector needs a CLIP ResNet (model.clip_preset)")
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
  """
  rng = np.random.default_rng(seed)
  head_std = head_std or {}

  def make(path, leaf):
    names = [getattr(k, "key", str(k)) for k in path]
    name, shape = names[-1], tuple(leaf.shape)
    top = names[1] if len(names) > 1 and names[0] == "params" else names[0]
    if name in ("scale", "var"):
      out = np.ones(shape)
    elif name in ("bias", "mean"):
      out = np.zeros(shape)
    elif top in head_std and name == "kernel":
      out = rng.normal(0.0, head_std[top], shape)
    elif name == "kernel" and len(shape) == 4:
      out = rng.normal(0.0, math.sqrt(2.0 / (shape[0] * shape[1] * shape[3])), shape)
    elif name == "kernel" and len(shape) >= 2:
      out = rng.normal(0.0, shape[0] ** -0.5, shape)
    elif name == "positional_embedding":
      out = rng.normal(0.0, shape[-1] ** -0.5, shape)
    else:
      out = rng.normal(0.0, 0.02, shape)
    return jnp.asarray(out, leaf.dtype)

  return jax.tree_util.tree_map_with_path(make, shapes)


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
  converted directory, official RegionCLIP .pth) -> (config, params without 'params' wrapper)."""
  from regionclip_jax.models import clip

  loaded = clip.load(path, source=source or None)
  return loaded.config, loaded.params


def with_backbone(variables: PyTree, clip_params: PyTree) -> PyTree:
  """Replace the detector's / RPN's backbone 'visual' params by a CLIP checkpoint's, checking
  every shape; checkpoint entries the model lacks (the text tower; layer4 + attnpool for an RPN,
  whose backbone stops at res4) are ignored."""
  src = _find_visual(clip_params)
  if src is None:
    raise ValueError("detection/builders.py: checkpoint params hold no 'visual' subtree")
  dst = dict(variables["params"])
  bb = dict(dst["backbone"])
  old, new = bb["visual"], src["visual"]
  ol, nl = jax.tree_util.tree_leaves_with_path(old), dict(jax.tree_util.tree_leaves_with_path(new))
  for path, leaf in ol:
    if path not in nl:
      raise ValueError(
          f"detection/builders.py: checkpoint lacks backbone param " f"{jax.tree_util.keystr(path)}"
      )
    if tuple(nl[path].shape) != tuple(leaf.shape):
      raise ValueError(
          f"detection/builders.py: backbone param {jax.tree_util.keystr(path)} has "
          f"shape {tuple(nl[path].shape)} in the checkpoint, model wants {tuple(leaf.shape)}"
      )
  bb["visual"] = jax.tree_util.tree_map_with_path(lambda p, o: jnp.asarray(nl[p], o.dtype), old)
  dst["backbone"] = bb
  return {**variables, "params": dst}


def rpn_settings(cfg) -> RPNSettings:
  r = cfg.rpn
  return RPNSettings(
      iou_thresholds=tuple(r.iou_thresholds),
      batch_size_per_image=r.batch_size_per_image,
      positive_fraction=r.positive_fraction,
      pre_nms_topk_train=r.pre_nms_topk_train,
      post_nms_topk_train=r.post_nms_topk_train,
      pre_nms_topk_test=r.pre_nms_topk_test,
      post_nms_topk_test=r.post_nms_topk_test,
      nms_thresh=r.nms_thresh,
  )


def roi_settings(cfg) -> RoIHeadSettings:
  r = cfg.roi_heads
  return RoIHeadSettings(
      batch_size_per_image=r.batch_size_per_image,
      positive_fraction=r.positive_fraction,
      iou_threshold=r.iou_threshold,
      temperature=r.temperature,
      focal_gamma=r.focal_gamma,
      bg_weight=r.bg_weight,
      box_weights=tuple(r.box_weights),
  )


def inference_settings(cfg) -> InferenceSettings:
  t = cfg.test
  weights = tuple(t.get("pretrained_score_weights", ()) or ()) or None
  if weights is not None and (len(weights) != 2 or not all(0.0 <= w <= 1.0 for w in weights)):
    raise ValueError(
        f"detection/builders.py: test.pretrained_score_weights must be (w_seen, "
        f"w_unseen) in [0, 1], or (), got {weights}"
    )
  return InferenceSettings(
      score_thresh=t.score_thresh,
      nms_thresh=t.nms_thresh,
      topk=t.topk,
      soft_nms_enabled=t.soft_nms_enabled,
      soft_nms_sigma=t.soft_nms_sigma,
      soft_nms_prune=t.soft_nms_prune,
      max_candidates=t.max_candidates,
      rpn_fusion=t.rpn_fusion or None,
      temperature=cfg.roi_heads.temperature,
      apply_deltas=t.get("apply_deltas", True),
      pretrained_score_weights=weights,
  )


def class_embeddings(
    names: Sequence[str], clip_config: CLIPConfig, clip_params: PyTree, batch_size: int = 256
) -> np.ndarray:
  """[K, D] float32 unnormalised 81-template mean text embeddings (official concept features)."""
  from regionclip_jax.models.clip import LoadedCLIP
  from regionclip_jax.pretrain.prompts import concept_embeddings

  loaded = LoadedCLIP(clip_config, clip_params)
  return np.asarray(
      concept_embeddings(loaded.encode_text, list(names), loaded.tokenize, batch_size), np.float32
  )


def read_embeddings(path: str, num_classes: Optional[int] = None) -> np.ndarray:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"detection/builders.py: text embeddings file not found: {path}")
  emb = np.load(path).astype(np.float32)
  if emb.ndim != 2 or (num_classes is not None and emb.shape[0] != num_classes):
    raise ValueError(
        f"detection/builders.py: {path} holds shape {emb.shape}, want "
        f"[{num_classes if num_classes is not None else 'K'}, D]"
    )
  return emb


# ----------------------------------------------------------------------------- export / import
EXPORT_PARAMS = "variables.msgpack"
EXPORT_META = "model.json"
EXPORT_PRETRAINED = "pretrained_variables.msgpack"  # the frozen init, for the score ensemble


def export_model(directory: str, variables: PyTree, meta: dict, pretrained: PyTree = None) -> None:
  """Write final variables (flax msgpack) + a json describing how to rebuild the module
  (`kind` "detector" | "rpn", `clip_config` dict, module settings). `pretrained`: the frozen init's
  variables (same module) for the score ensemble, written beside them."""
  import json
  from flax import serialization

  os.makedirs(directory, exist_ok=True)
  for name, tree in ((EXPORT_PARAMS, variables), (EXPORT_PRETRAINED, pretrained)):
    if tree is not None:
      with open(os.path.join(directory, name), "wb") as f:
        f.write(serialization.msgpack_serialize(jax.tree.map(np.asarray, tree)))
  with open(os.path.join(directory, EXPORT_META), "w") as f:
    json.dump(meta, f, indent=1)


def is_export(path: str) -> bool:
  return os.path.isfile(os.path.join(path, EXPORT_META))


def load_export(directory: str):
  """-> (module, variables, meta) for an `export_model` directory (a detector workdir's `export/`).
  For kind "rpn" the module is (RPNModel, DefaultAnchorGenerator)."""
  import json
  from flax import serialization

  meta_path = os.path.join(directory, EXPORT_META)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(
        f"detection/builders.py: no {EXPORT_META} in {directory} (not an export)"
    )
  with open(meta_path) as f:
    meta = json.load(f)
  clip_cfg = CLIPConfig.from_dict(meta["clip_config"])
  if meta["kind"] == "detector":
    module = build_detector(
        clip_cfg,
        freeze_at=0,
        pooler_resolution=meta["pooler_resolution"],
        sampling_ratio=meta.get("sampling_ratio", 0),
        head=meta.get("head", "c4"),
        fpn=meta.get("fpn"),
    )
  elif meta["kind"] == "rpn":
    module = build_rpn(
        clip_cfg,
        anchor_sizes=meta["anchor_sizes"],
        aspect_ratios=meta["aspect_ratios"],
        stride=meta.get("stride", 16),
        freeze_at=0,
        head=meta.get("head", "c4"),
        fpn_channels=meta.get("fpn_channels", 256),
    )
  else:
    raise ValueError(f"detection/builders.py: {meta_path}: unknown kind {meta['kind']!r}")
  with open(os.path.join(directory, EXPORT_PARAMS), "rb") as f:
    variables = serialization.msgpack_restore(f.read())
  variables = jax.tree.map(jnp.asarray, variables)
  return module, variables, meta


def load_export_pretrained(directory: str) -> Optional[PyTree]:
  """The frozen init's variables an export carries for the score ensemble, or None."""
  from flax import serialization

  path = os.path.join(directory, EXPORT_PRETRAINED)
  if not os.path.isfile(path):
    return None
  with open(path, "rb") as f:
    return jax.tree.map(jnp.asarray, serialization.msgpack_restore(f.read()))
