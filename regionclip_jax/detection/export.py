"""Export and loading of trained detectors and RPNs.

An export directory (a detector or RPN workdir's `export/`) holds the final variables (flax
msgpack), a json describing how to rebuild the module, and optionally the frozen init's variables
for the score ensemble. Later stages (fine-tuning, zero-shot, pretraining proposals) read it back
without the training config. An official offline RPN converted by `export_detectron2_rpn` is an RPN
export too (`backbone` "detectron2" in model.json: `offline_rpn.DetectronRPN`, no CLIP config),
and an official fine-tuned RegionCLIP detector converted by `export_regionclip_detector` a
detector export (with its text classifier's embeddings beside it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from regionclip_jax import files
from regionclip_jax.detection import offline_rpn
from regionclip_jax.detection.builders import build_detector, build_rpn, with_backbone
from regionclip_jax.detection.settings import RPNSettings
from regionclip_jax.models.checkpoints import CheckpointError, detectron2_rpn_params
from regionclip_jax.models.checkpoints.regionclip import DEFAULT_LOGIT_SCALE
from regionclip_jax.models.checkpoints.regionclip_detector import regionclip_detector_parts
from regionclip_jax.models.checkpoints.torch_files import read_weights_file
from regionclip_jax.models.clip import CLIPConfig

PyTree = Any

EXPORT_PARAMS = "variables.msgpack"
EXPORT_META = "model.json"
EXPORT_PRETRAINED = "pretrained_variables.msgpack"  # the frozen init, for the score ensemble


def export_model(directory: str, variables: PyTree, meta: dict, pretrained: PyTree = None) -> None:
  """Write final variables (flax msgpack) + a json describing how to rebuild the module
  (`kind` "detector" | "rpn", `clip_config` dict, module settings). `pretrained`: the frozen init's
  variables (same module) for the score ensemble, written beside them."""
  # each file atomically and the marker that `is_export` checks last: a kill leaves no export
  # that looks complete
  for name, tree in ((EXPORT_PARAMS, variables), (EXPORT_PRETRAINED, pretrained)):
    if tree is not None:
      files.write_bytes(
          os.path.join(directory, name),
          serialization.msgpack_serialize(jax.tree.map(np.asarray, tree)),
      )
  with files.atomic_open(os.path.join(directory, EXPORT_META)) as f:
    json.dump(meta, f, indent=1)


def is_export(path: str) -> bool:
  return os.path.isfile(os.path.join(path, EXPORT_META))


def load_export(directory: str):
  """-> (module, variables, meta) for an `export_model` directory (a detector workdir's `export/`).
  For kind "rpn" the module is (RPNModel, DefaultAnchorGenerator)."""
  meta_path = os.path.join(directory, EXPORT_META)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{__name__}: no {EXPORT_META} in {directory} (not an export)")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta["kind"] == "rpn" and meta.get("backbone") == offline_rpn.BACKBONE_KIND:
    module = offline_rpn.build_from_meta(meta)  # a converted official RPN: no CLIP inside
    return module, _read_variables(directory), meta
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
    raise ValueError(f"{__name__}: {meta_path}: unknown kind {meta['kind']!r}")
  return module, _read_variables(directory), meta


def _read_variables(directory: str) -> PyTree:
  with open(os.path.join(directory, EXPORT_PARAMS), "rb") as f:
    variables = serialization.msgpack_restore(f.read())
  return jax.tree.map(jnp.asarray, variables)


def load_export_pretrained(directory: str) -> Optional[PyTree]:
  """The frozen init's variables an export carries for the score ensemble, or None."""
  path = os.path.join(directory, EXPORT_PRETRAINED)
  if not os.path.isfile(path):
    return None
  with open(path, "rb") as f:
    return jax.tree.map(jnp.asarray, serialization.msgpack_restore(f.read()))


def export_detectron2_rpn(checkpoint: str, directory: str) -> dict:
  """An official offline RPN `.pth` (detectron2 `{"model": ...}`) -> an RPN export `directory`
  that `load_rpn` reads like a trained one (`offline_rpn.DetectronRPN` + its anchors). -> meta."""
  spec, params = detectron2_rpn_params(_model_entries(checkpoint), checkpoint)
  try:
    meta = offline_rpn.meta_for(spec, checkpoint)
    rpn, _ = offline_rpn.build_from_meta(meta)
    variables = offline_rpn.check_params(rpn, params, checkpoint)
  except ValueError as e:
    raise CheckpointError(str(e)) from None
  export_model(directory, variables, meta)
  return meta


def _model_entries(checkpoint: str) -> dict:
  """A detectron2 `.pth` -> its state dict (the entries under "model", when wrapped)."""
  raw = read_weights_file(checkpoint)
  return {k[len("model.") :]: v for k, v in raw.items() if k.startswith("model.")} or raw


def export_regionclip_detector(checkpoint: str, directory: str) -> dict:
  """An official RegionCLIP fine-tuned detector `.pth` (`regionclip_finetuned-coco_rn50.pth`;
  layout: models/checkpoints/regionclip_detector.py) -> a detector export `directory` that
  `load_export` and `tools.zero_shot --checkpoint=DIR` read like one fine-tuned here. Beside it:
  `class_embeddings.npy` [K', D] (its test vocabulary's text embeddings, e.g. COCO's 65; else the
  training classes') and `train_class_embeddings.npy` [K, D]. -> meta."""
  parts = regionclip_detector_parts(_model_entries(checkpoint), checkpoint)
  cfg = parts.config
  res = 2 * cfg.vision.pool_grid  # the official POOLER_RESOLUTION: 14 RN50, 18 RN50x4
  det = build_detector(cfg, freeze_at=0, pooler_resolution=res)
  s = cfg.image_size
  shapes = jax.eval_shape(
      det.init,
      jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32),
      jax.ShapeDtypeStruct((1, 1, 4), jnp.float32),
  )
  try:
    variables = with_backbone(shapes, {"visual": parts.visual})
  except ValueError as e:
    raise CheckpointError(f"{checkpoint}: {e}") from None
  params = dict(variables["params"])
  for name, leaf in shapes["params"]["bbox_pred"].items():
    if parts.bbox_pred[name].shape != leaf.shape:
      raise CheckpointError(f"{checkpoint}: bbox_pred {name} {parts.bbox_pred[name].shape}")
  params["bbox_pred"] = parts.bbox_pred
  # the trunk's text-side leaves: no text tower here (unused: classes come as embeddings)
  backbone = {
      k: (v if k == "visual" else np.zeros(v.shape, np.float32))
      for k, v in params["backbone"].items()
  }
  backbone["logit_scale"] = np.asarray(DEFAULT_LOGIT_SCALE, np.float32)
  params["backbone"] = backbone
  meta = {
      "kind": "detector",
      "clip_config": cfg.to_dict(),
      "pooler_resolution": res,
      "sampling_ratio": 0,
      "head": "c4",
      "temperature": 0.01,  # the official CLSS_TEMP (not in the checkpoint)
      "converted_from": os.path.basename(checkpoint),
      "class_embeddings": "class_embeddings.npy",
      "num_classes": int(parts.embeddings["class_embeddings"].shape[0]),
      "train_num_classes": int(parts.embeddings["train_class_embeddings"].shape[0]),
  }
  for name, emb in parts.embeddings.items():  # before the marker, which export_model writes last
    files.save_npy(os.path.join(directory, name + ".npy"), emb)
  export_model(directory, {**variables, "params": params}, meta)
  return meta


def rpn_test_settings(path: str, settings: RPNSettings = RPNSettings()) -> RPNSettings:
  """`settings` with the test-time top-k of the official config a converted offline RPN came
  from (its model.json `test`: C4 6000 / 1000, FPN 1000 per level / 1000); unchanged for an RPN
  trained here, and NMS / min size stay the caller's (the zero-shot and pretraining configs set
  their own)."""
  d = path if is_export(path) else os.path.join(path, "export")
  with open(os.path.join(d, EXPORT_META)) as f:
    test = json.load(f).get("test")
  if not test:
    return settings
  return dataclasses.replace(
      settings,
      pre_nms_topk_test=int(test["pre_nms_topk_test"]),
      post_nms_topk_test=int(test["post_nms_topk_test"]),
  )


def load_rpn(path: str):
  """-> (RPNModel, anchor generator, variables) from an RPN workdir or its export directory."""
  d = path if is_export(path) else os.path.join(path, "export")
  (rpn, gen), variables, _ = load_export(d)
  return rpn, gen, variables
