"""Official RegionCLIP fine-tuned detectors (`regionclip_finetuned-{coco,lvis}_rn50{,x4}.pth`):
key layout -> the parts of our C4 detector (`detection.export.export_regionclip_detector`).

Layout (RegionCLIP's `CLIPFastRCNN` with `CLIPRes5ROIHeads` and `FastRCNNOutputLayers` under
USE_TEXT_EMB_CLASSIFIER), saved by detectron2 as `{"model": state_dict, ...}`:
- `backbone.*`: the CLIP `ModifiedResNet`, named as in the pretrained checkpoints
  (`regionclip.py`). The RoI head has no weights of its own: it runs `backbone.layer4` and
  `backbone.attnpool` on each RoIAlign crop of res4.
- `roi_heads.box_predictor.cls_score.weight` [K, D]: the training classes' text embeddings
  (frozen, no bias); `cls_bg_score.weight` [1, D]: the background embedding, zeros, frozen;
  `test_cls_score.weight` [K', D], when trained with MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH:
  the test vocabulary's embeddings (COCO: 65 classes after 48 in training).
- `roi_heads.box_predictor.bbox_pred.weight` [4, D], `.bias` [4]: class-agnostic deltas.
- `offline_backbone.*`, `offline_proposal_generator.*`: the frozen offline RPN; ignored (the
  official evaluation overwrites it with MODEL.CLIP.BB_RPN_WEIGHTS, a file converted on its own).
Classification is cosine / temperature (CLSS_TEMP 0.01) against the text embeddings with the zero
background logit, which is what our detector computes from embeddings given at call time.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from regionclip_jax.models.checkpoints.errors import CheckpointError
from regionclip_jax.models.checkpoints.regionclip import regionclip_to_openai
from regionclip_jax.models.clip_model import CLIPConfig, TextConfig, param_shapes
from regionclip_jax.models.convert_openai import (
    config_from_state_dict,
    params_from_state_dict,
    state_dict_from_params,
)

PREDICTOR = "roi_heads.box_predictor."
# a detector has no text tower: its config carries this stand-in (text comes from embeddings
# or another checkpoint's text tower)
NO_TEXT = TextConfig(context_length=1, vocab_size=1, width=64, heads=1, layers=1)


def is_regionclip_detector(keys) -> bool:
  """RegionCLIP's text-classifier box predictor on a CLIP ResNet trunk."""
  keys = set(keys)
  return (
      PREDICTOR + "bbox_pred.weight" in keys
      and PREDICTOR + "cls_bg_score.weight" in keys
      and any(k.startswith("backbone.layer1.") for k in keys)
  )


@dataclasses.dataclass
class DetectorParts:
  config: CLIPConfig  # vision from the weights, text NO_TEXT
  visual: dict  # Flax params of the CLIP image tower ({'visual': ...} contents)
  bbox_pred: dict  # {'kernel' [D, 4], 'bias' [4]}
  embeddings: dict  # "class_embeddings" [K', D] (test vocabulary, else the training one),
  # "train_class_embeddings" [K, D]


class _Shape:
  """A shape-only stand-in for config inference."""

  def __init__(self, *shape):
    self.shape = shape


def _array(sd: dict, key: str, where: str) -> np.ndarray:
  if key not in sd:
    raise CheckpointError(f"{where}: a RegionCLIP detector without {key}")
  return np.asarray(sd[key], np.float32)


def regionclip_detector_parts(sd: dict, where: str = "checkpoint") -> DetectorParts:
  """A fine-tuned detector's numpy state dict (the `model` entries) -> its parts; a layout our
  detector cannot compute (FPN box head, class-specific deltas, a learned background or a
  classifier bias) is a CheckpointError naming the key."""
  if any(k.startswith("roi_heads.box_head.") for k in sd):
    raise CheckpointError(
        f"{where}: a RegionCLIP FPN detector (roi_heads.box_head.*); only the C4 detectors "
        "(CLIPRes5ROIHeads, as released) are supported"
    )
  for name in ("cls_score", "cls_bg_score", "test_cls_score"):
    if PREDICTOR + name + ".bias" in sd:
      raise CheckpointError(f"{where}: {PREDICTOR}{name}.bias: a classifier bias is not supported")
  bg = _array(sd, PREDICTOR + "cls_bg_score.weight", where)
  if np.any(bg != 0):
    raise CheckpointError(
        f"{where}: {PREDICTOR}cls_bg_score.weight is not zero (max |w| {np.abs(bg).max():.3g}); "
        "our classifier has the official frozen zero background embedding only"
    )
  w = _array(sd, PREDICTOR + "bbox_pred.weight", where)
  b = _array(sd, PREDICTOR + "bbox_pred.bias", where)
  if w.ndim != 2 or w.shape[0] != 4 or b.shape != (4,):
    raise CheckpointError(
        f"{where}: {PREDICTOR}bbox_pred is {tuple(w.shape)}: only class-agnostic box "
        "regression (CLS_AGNOSTIC_BBOX_REG, [4, D]) is supported"
    )
  try:
    vis = regionclip_to_openai(
        {k: v for k, v in sd.items() if k.startswith("backbone.")}, "student", where
    )
  except ValueError as e:
    raise CheckpointError(str(e)) from None
  vis = {k: v for k, v in vis.items() if k.startswith("visual.")}
  dim = _array(vis, "visual.attnpool.c_proj.weight", where).shape[0]
  config = _config(vis, dim, where)
  # the text stand-in's zero weights only complete the state dict that params_from_state_dict
  # checks; they are dropped again
  text_shapes = {k: v for k, v in param_shapes(config).items() if k != "visual"}
  text = state_dict_from_params(
      jax.tree.map(lambda v: np.zeros(v.shape, np.float32), text_shapes), num_batches_tracked=False
  )
  try:
    params = params_from_state_dict({**text, **vis}, config)
  except ValueError as e:
    raise CheckpointError(f"{where}: {e}") from None
  emb = {"train_class_embeddings": _array(sd, PREDICTOR + "cls_score.weight", where)}
  test = PREDICTOR + "test_cls_score.weight"
  emb["class_embeddings"] = _array(sd, test, where) if test in sd else emb["train_class_embeddings"]
  for name, e in emb.items():
    if e.ndim != 2 or e.shape[1] != dim or w.shape[1] != dim:
      raise CheckpointError(
          f"{where}: {name} {tuple(e.shape)} and bbox_pred {tuple(w.shape)} do not take the "
          f"attnpool's {dim}-d region embeddings"
      )
  return DetectorParts(config, params["visual"], {"kernel": w.T.copy(), "bias": b}, emb)


def _config(vis: dict, dim: int, where: str) -> CLIPConfig:
  """The image tower's config from its shapes (the shared inference), text NO_TEXT."""
  shapes = dict(vis)
  shapes["text_projection"] = _Shape(NO_TEXT.width, dim)
  shapes["ln_final.weight"] = _Shape(NO_TEXT.width)
  shapes["positional_embedding"] = _Shape(NO_TEXT.context_length, NO_TEXT.width)
  shapes["token_embedding.weight"] = _Shape(NO_TEXT.vocab_size, NO_TEXT.width)
  try:
    cfg = config_from_state_dict(shapes)
  except (KeyError, ValueError) as e:
    raise CheckpointError(f"{where}: cannot infer the CLIP ResNet: {e}") from None
  if not cfg.is_resnet:
    raise CheckpointError(f"{where}: the backbone is not a CLIP ResNet")
  return dataclasses.replace(cfg, text=NO_TEXT)
