"""Export and loading of trained detectors and RPNs.

An export directory (a detector or RPN workdir's `export/`) holds the final variables (flax
msgpack), a json describing how to rebuild the module, and optionally the frozen init's variables
for the score ensemble. Later stages (fine-tuning, zero-shot, pretraining proposals) read it back
without the training config. An official offline RPN converted by `export_detectron2_rpn` is an RPN
export too (`backbone` "detectron2" in model.json: `offline_rpn.DetectronRPN`, no CLIP config),
and an official fine-tuned RegionCLIP detector converted by `export_regionclip_detector` a
detector export (with its text classifier's embeddings beside it). `load_rpn` also takes an
official offline-RPN `.pth` as it is (converted in memory, as `tools.convert` would write it).
Every reader checks what it is given: a file or export of another kind (a detector where an RPN
is expected, an FPN RPN where a C4 one is, a pretrained checkpoint given as a detector) is a
`builders.InputFileError`, one line naming the path, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from regionclip_jax import files
from regionclip_jax.detection import offline_rpn
from regionclip_jax.detection.builders import (
    CONVERT_HINT,
    InputFileError,
    build_detector,
    build_rpn,
    with_backbone,
)
from regionclip_jax.detection.settings import RPNSettings
from regionclip_jax.models.checkpoints import CheckpointError, detectron2_rpn_params
from regionclip_jax.models.checkpoints.detectron2 import detectron2_key as detectron2_rpn_key
from regionclip_jax.models.checkpoints.detectron2 import is_detectron2_rpn
from regionclip_jax.models.checkpoints.detect import (
    DETECTRON2_RPN,
    REGIONCLIP_DETECTOR,
    describe,
    detect_kind,
)
from regionclip_jax.models.checkpoints.regionclip import DEFAULT_LOGIT_SCALE
from regionclip_jax.models.checkpoints.regionclip_detector import regionclip_detector_parts
from regionclip_jax.models.checkpoints.torch_files import peek_torch_keys, read_weights_file
from regionclip_jax.models.clip import CLIPConfig

PyTree = Any

EXPORT_PARAMS = "variables.msgpack"
EXPORT_META = "model.json"
EXPORT_PRETRAINED = "pretrained_variables.msgpack"  # the frozen init, for the score ensemble
_ARTICLE = {"detector": "a detector", "rpn": "an RPN"}


def export_model(
    directory: str,
    variables: PyTree,
    meta: dict,
    pretrained: PyTree = None,
    arrays: Optional[dict[str, np.ndarray]] = None,
) -> None:
  """Write final variables (flax msgpack) + a json describing how to rebuild the module
  (`kind` "detector" | "rpn", `clip_config` dict, module settings). `pretrained`: the frozen init's
  variables (same module) for the score ensemble, written beside them. `arrays`: name -> array
  saved as `<name>.npy` beside them (e.g. class embeddings)."""
  # An earlier export's marker goes first, then each file is written atomically and the marker
  # last: a kill or an error leaves no export that looks complete, nor new weights under old meta.
  marker = os.path.join(directory, EXPORT_META)
  if os.path.exists(marker):
    os.remove(marker)
  for name, array in (arrays or {}).items():
    files.save_npy(os.path.join(directory, name + ".npy"), array)
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


def load_export(directory: str, kind: Optional[str] = None):
  """-> (module, variables, meta) for an `export_model` directory (a detector workdir's `export/`).
  For kind "rpn" the module is (RPNModel, DefaultAnchorGenerator). `kind` ("detector" | "rpn"):
  the kind the caller needs; another is an InputFileError, as is a path with no export."""
  meta = read_meta(directory, kind)
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
  else:
    module = build_rpn(
        clip_cfg,
        anchor_sizes=meta["anchor_sizes"],
        aspect_ratios=meta["aspect_ratios"],
        stride=meta.get("stride", 16),
        freeze_at=0,
        head=meta.get("head", "c4"),
        fpn_channels=meta.get("fpn_channels", 256),
    )
  return module, _read_variables(directory), meta


def read_meta(directory: str, kind: Optional[str] = None) -> dict:
  """An export's model.json, checked to be of `kind` (None: "detector" or "rpn")."""
  meta_path = os.path.join(directory, EXPORT_META)
  want = f"{_ARTICLE[kind]} export" if kind else "an export"
  if not os.path.isfile(meta_path):
    raise InputFileError(
        f"{directory}: expected {want} directory ({EXPORT_META} + {EXPORT_PARAMS}), "
        f"found {describe(directory)}{_convert_hint(directory)}"
    )
  try:
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise InputFileError(f"{meta_path}: unreadable: {' '.join(str(e).split())}") from None
  found = meta.get("kind") if isinstance(meta, dict) else None
  if found not in ("detector", "rpn"):
    raise InputFileError(f"{meta_path}: unknown kind {found!r} (expected 'detector' or 'rpn')")
  if kind and found != kind:
    raise InputFileError(f"{directory}: expected {want}, found {_ARTICLE[found]} export")
  return meta


def _convert_hint(path: str) -> str:
  """For an official file where an export is expected: how to convert it."""
  try:
    official = os.path.isfile(path) and detect_kind(path) in (REGIONCLIP_DETECTOR, DETECTRON2_RPN)
  except CheckpointError:  # not a checkpoint at all: `describe` says so
    official = False
  return f"; convert it with `{CONVERT_HINT.format(path=path)}` and give DIR" if official else ""


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
  that `load_rpn` reads like a trained one (`offline_rpn.DetectronRPN` + its anchors). -> meta.
  Nothing is written unless the whole file converts."""
  meta, variables = _detectron2_rpn(checkpoint)
  export_model(directory, variables, meta)
  return meta


def _detectron2_rpn(checkpoint: str) -> tuple[dict, dict]:
  """An official offline RPN file -> (model.json meta, numpy variables), every weight checked
  (present, shaped as the module wants, finite); another kind of file is an InputFileError."""
  try:
    kind = detect_kind(checkpoint)
  except CheckpointError as e:
    raise InputFileError(str(e)) from None
  # a pretrained RegionCLIP checkpoint may hold the offline RPN it was trained with (its
  # offline_* copy: what the official visualisation runs when no BB_RPN_WEIGHTS is given)
  stored = kind == "regionclip" and is_detectron2_rpn(
      [k[len("model.") :] if k.startswith("model.") else k for k in peek_torch_keys(checkpoint)],
      offline=True,
  )
  if kind != DETECTRON2_RPN and not stored:
    raise InputFileError(
        f"{checkpoint}: not a detectron2 RPN: expected an offline RPN (detectron2 ResNet + "
        f"proposal_generator.rpn_head.*, e.g. rpn_coco_48.pth), found {describe(checkpoint)}"
    )
  try:
    spec, params = detectron2_rpn_params(_model_entries(checkpoint), checkpoint)
    meta = offline_rpn.meta_for(spec, checkpoint)
    rpn, _ = offline_rpn.build_from_meta(meta)
    variables = offline_rpn.check_params(rpn, params, checkpoint)
  except ValueError as e:
    raise InputFileError(str(e)) from None
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"]):
    if not np.all(np.isfinite(leaf)):
      key = detectron2_rpn_key(tuple(k.key for k in path), meta["arch"])
      raise InputFileError(f"{checkpoint}: {key} holds NaN / inf: a corrupt checkpoint")
  return meta, variables


@functools.lru_cache(maxsize=2)
def _detectron2_rpn_cached(checkpoint: str, mtime_ns: int, size: int) -> tuple[dict, dict]:
  """`_detectron2_rpn`, once per file version (a run reads its RPN's settings, then weights)."""
  del mtime_ns, size  # cache key only
  return _detectron2_rpn(checkpoint)


def _rpn_file(checkpoint: str) -> tuple[dict, dict]:
  st = os.stat(checkpoint)
  return _detectron2_rpn_cached(os.path.abspath(checkpoint), st.st_mtime_ns, st.st_size)


def _model_entries(checkpoint: str) -> dict:
  """A detectron2 `.pth` -> its state dict (the entries under "model", when wrapped)."""
  raw = read_weights_file(checkpoint)
  return {k[len("model.") :]: v for k, v in raw.items() if k.startswith("model.")} or raw


def export_regionclip_detector(checkpoint: str, directory: str) -> dict:
  """An official RegionCLIP fine-tuned detector `.pth` (`regionclip_finetuned-coco_rn50.pth`;
  layout: models/checkpoints/regionclip_detector.py) -> a detector export `directory` that
  `load_export` and `tools.zero_shot --checkpoint=DIR` read like one fine-tuned here. Beside it:
  `class_embeddings.npy` [K', D] (its test vocabulary's text embeddings, e.g. COCO's 65; else the
  training classes') and `train_class_embeddings.npy` [K, D]. -> meta. A file of another kind
  (a pretrained checkpoint, an offline RPN) is an InputFileError; nothing is written unless the
  whole file converts."""
  try:
    kind = detect_kind(checkpoint)
  except CheckpointError as e:
    raise InputFileError(str(e)) from None
  if kind != REGIONCLIP_DETECTOR:
    raise InputFileError(
        f"{checkpoint}: expected a fine-tuned RegionCLIP detector (backbone.* + "
        f"roi_heads.box_predictor.*, e.g. regionclip_finetuned-coco_rn50.pth), found "
        f"{describe(checkpoint)}"
    )
  try:
    parts = regionclip_detector_parts(_model_entries(checkpoint), checkpoint)
  except CheckpointError as e:
    raise InputFileError(str(e)) from None
  checked = {"bbox_pred": parts.bbox_pred, **parts.embeddings, "backbone": parts.visual}
  for path, leaf in jax.tree_util.tree_leaves_with_path(checked):
    if not np.all(np.isfinite(leaf)):
      name = jax.tree_util.keystr(path)
      raise InputFileError(f"{checkpoint}: {name} holds NaN / inf: a corrupt checkpoint")
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
    raise InputFileError(f"{checkpoint}: {e}") from None
  params = dict(variables["params"])
  for name, leaf in shapes["params"]["bbox_pred"].items():
    if parts.bbox_pred[name].shape != leaf.shape:
      raise InputFileError(f"{checkpoint}: bbox_pred {name} {parts.bbox_pred[name].shape}")
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
  export_model(directory, {**variables, "params": params}, meta, arrays=dict(parts.embeddings))
  return meta


def rpn_test_settings(path: str, settings: RPNSettings = RPNSettings()) -> RPNSettings:
  """`settings` with the test-time top-k of the official config a converted offline RPN came
  from (its model.json `test`: C4 6000 / 1000, FPN 1000 per level / 1000); unchanged for an RPN
  trained here, and NMS / min size stay the caller's (the zero-shot and pretraining configs set
  their own). `path`: what `load_rpn` takes."""
  test = _rpn_meta(path).get("test")
  if not test:
    return settings
  return dataclasses.replace(
      settings,
      pre_nms_topk_test=int(test["pre_nms_topk_test"]),
      post_nms_topk_test=int(test["post_nms_topk_test"]),
  )


def rpn_arch(meta: dict) -> str:
  """ "c4" or "fpn": a converted official RPN's `arch`, an RPN trained here's `head`."""
  return meta.get("arch") or meta.get("head", "c4")


def _rpn_dir(path: str) -> str:
  """An RPN workdir -> its export/; an export directory as it is."""
  return path if is_export(path) else os.path.join(path, "export")


def _rpn_meta(path: str, arch: str = "") -> dict:
  """The model.json of the RPN at `path` (official file, export or workdir), checked to be an RPN
  of `arch` ("" = either)."""
  if os.path.isfile(path):
    meta = _rpn_file(path)[0]
  elif os.path.isdir(path) and not is_export(path) and not is_export(_rpn_dir(path)):
    raise InputFileError(
        f"{path}: expected an RPN (an official offline-RPN .pth, an RPN export or a stage='rpn' "
        f"workdir), found {describe(path)} without {EXPORT_META}"
    )
  elif not os.path.exists(path):
    raise InputFileError(f"{path}: RPN not found")
  else:
    meta = read_meta(_rpn_dir(path), "rpn")
  if arch and rpn_arch(meta) != arch:
    names = {
        "c4": "a C4 RPN (res4, one level: rpn_coco_48.pth)",
        "fpn": "an FPN RPN (P2-P6: rpn_lvis_866*.pth)",
    }
    raise InputFileError(
        f"{path}: expected {names.get(arch, arch)} (rpn.checkpoint_arch), found "
        f"{names.get(rpn_arch(meta), rpn_arch(meta))}"
    )
  return meta


def load_rpn(path: str, arch: str = ""):
  """-> (RPNModel, anchor generator, variables) from an RPN workdir, its export directory, or an
  official offline-RPN `.pth` (converted in memory). `arch` ("c4" | "fpn"; "" = either): the
  architecture the caller's config names; another is an InputFileError."""
  meta = _rpn_meta(path, arch)
  if os.path.isfile(path):
    variables = jax.tree.map(jnp.asarray, _rpn_file(path)[1])
    return (*offline_rpn.build_from_meta(meta), variables)
  (rpn, gen), variables, _ = load_export(_rpn_dir(path), "rpn")
  return rpn, gen, variables
