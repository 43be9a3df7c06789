"""Entry points behind `detection.run`: stage "rpn" (offline class-agnostic RPN on base boxes) and stage
"finetune" (open-vocabulary detector on base classes, proposals from the frozen RPN), both on the
shared training infrastructure (train.loop / train.sharding / train.checkpoint), then evaluation
(AP50 novel / base / all with pycocotools).

    main.py (task "detection") -> detection.run.run -> config.stage "rpn": train_rpn(config, workdir)
                                                     config.stage "finetune": train_detector(config, workdir)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.detection import builders
from regionclip_jax.detection import fpn as fpn_lib
from regionclip_jax.detection.predictor import DetectorPredictor
from regionclip_jax.detection.train_lib import make_detector_step, make_rpn_step
from regionclip_jax.models.clip import (
    FROZEN_BN_REGEX,
    CLIPConfig,
    get_config as clip_preset,
    learned_temperature,
)
from regionclip_jax.train import optimizer as optim
from regionclip_jax.train.state import create_train_state

# FREEZE_AT 2: stem (conv1-3 + their BN) and res2 (layer1) never train; FrozenBN never trains.
TRAINABLE_DETECTOR = (r"backbone/visual/(layer[234]|attnpool)/", r"bbox_pred/")
TRAINABLE_RPN = (r"backbone/visual/(layer[23])/", r"rpn_head/")


# ----------------------------------------------------------------------------- data


class BaseLabelMap:
  """Grain map: dataset labels -> training-class indices; boxes of other classes (novel) are
  masked out, as in base-only training."""

  def __init__(self, lookup: Sequence[int]):
    self.lookup = np.asarray(lookup, np.int32)

  def __call__(self, record: dict) -> dict:
    record = dict(record)
    lab = np.asarray(record["labels"], np.int32)
    mapped = np.where(
        (lab >= 0) & (lab < len(self.lookup)),
        self.lookup[np.clip(lab, 0, len(self.lookup) - 1)],
        -1,
    )
    record["box_mask"] = np.asarray(record["box_mask"], bool) & (mapped >= 0)
    record["labels"] = np.where(record["box_mask"], mapped, -1).astype(np.int32)
    return record


def _shapes(cfg, train: bool):
  from regionclip_jax.data.shapes_world import ScenesWithout, ShapesWorld
  from regionclip_jax.data.transforms import shapes_world_transforms

  n = cfg.data.num_train if train else cfg.data.num_test
  seed = cfg.seed + (0 if train else 1000)
  if train and cfg.data.get("exclude_novel_images", False):
    # about half of the scenes show a novel shape: scan a world 4x larger for n novel-free ones
    world = ShapesWorld(4 * n + 64, image_size=cfg.data.image_size, seed=seed)
    src = ScenesWithout(world, n, world.novel_names)
  else:
    src = ShapesWorld(n, image_size=cfg.data.image_size, seed=seed)
  tf = shapes_world_transforms(
      image_size=cfg.data.image_size,
      max_boxes=cfg.data.max_boxes,
      flip=cfg.data.flip and train,
      captions=False,
  )
  return src, tf, list(src.concepts), list(src.base_names), list(src.novel_names)


def _coco(cfg, train: bool):
  """COCO / LVIS-format json + image directory (`data.coco.CocoDetection`): training reads the
  base split only (`<base_classes>_base`), testing every class (`<base_classes>_all`)."""
  from regionclip_jax.data.coco import CocoDetection
  from regionclip_jax.data.transforms import detection_transforms

  prefix = {"coco_ovd": "coco_ovd", "lvis": "lvis", "lvis_v1": "lvis"}.get(cfg.data.base_classes)
  if prefix is None:
    raise ValueError(
        f"detection/finetune.py: data.base_classes must be 'coco_ovd' or 'lvis', got "
        f"{cfg.data.base_classes!r}"
    )
  ann = cfg.data.train_annotations if train else cfg.data.test_annotations
  img = cfg.data.train_images if train else cfg.data.test_images
  src = CocoDetection(
      ann, img, split=f"{prefix}_base" if train else f"{prefix}_all", drop_empty=train
  )
  tf = detection_transforms(
      train=train,
      short_edge_lengths=tuple(cfg.data.short_edge_lengths),
      test_size=cfg.data.test_size,
      max_size=cfg.data.max_size,
      max_boxes=cfg.data.max_boxes,
      flip=cfg.data.flip,
  )
  names = list(src.class_names)
  if train:
    return src, tf, names, names, []
  base = CocoDetection(ann, img, split=f"{prefix}_base", drop_empty=False).class_names
  return src, tf, names, list(base), [n for n in names if n not in base]


def data_for(cfg, train: bool):
  """-> (source, transforms, label names (the records' labels index them), base names, novel names)."""
  if cfg.data.name == "shapes_world":
    return _shapes(cfg, train)
  if cfg.data.name == "coco":
    return _coco(cfg, train)
  raise ValueError(
      f"detection/finetune.py: data.name must be 'shapes_world' or 'coco', got {cfg.data.name!r}"
  )


# ----------------------------------------------------------------------------- models


def _clip_config(cfg, preset: str = "", path: str = "") -> tuple[CLIPConfig, Any]:
  """Architecture + (optional) CLIP params from `path` (default model.init_checkpoint)."""
  path = path or cfg.model.init_checkpoint
  if path and builders.is_export(path):
    _, variables, meta = builders.load_export(path)
    return CLIPConfig.from_dict(meta["clip_config"]), variables["params"]["backbone"]
  if path:
    return builders.load_clip_params(path, cfg.model.init_source or None)
  return clip_preset(preset or cfg.model.clip_preset), None


def class_text_embeddings(
    cfg, names: Sequence[str], path: str, clip_cfg, clip_params
) -> np.ndarray:
  """[K, D]: from an .npy file, else the CLIP text tower (81-template mean), else (no text weights:
  shapes world from scratch) fixed random vectors, flagged in the log."""
  if path:
    return builders.read_embeddings(path, len(names))
  if clip_params is not None and "transformer" in clip_params:
    return builders.class_embeddings(names, clip_cfg, clip_params)
  print(
      f"[finetune] no text weights: {len(names)} random class embeddings (seed {cfg.seed})",
      flush=True,
  )
  rng = np.random.default_rng(cfg.seed + 7)
  all_rng = rng.normal(size=(4096, clip_cfg.embed_dim)).astype(np.float32)
  return all_rng[: len(names)]


def test_class_embeddings(cfg, names: Sequence[str], clip_cfg, clip_params) -> np.ndarray:
  """[K, D] embeddings of the test vocabulary: `data.test_embeddings`, else the text tower of
  `model.text_checkpoint`, else that of the model's own checkpoint."""
  text_params = clip_params
  if cfg.model.get("text_checkpoint", ""):
    _, text_params = builders.load_clip_params(cfg.model.text_checkpoint)
  return class_text_embeddings(cfg, names, cfg.data.test_embeddings, clip_cfg, text_params)


def with_classifier_temperature(cfg):
  """-> cfg, or a copy whose roi_heads.temperature is 1 / the learned logit scale (capped at 100,
  as CLIP caps it) of the CLIP checkpoint `roi_heads.temperature_from_checkpoint`. For OpenAI
  CLIP (scale 100) that is the official CLSS_TEMP 0.01; a CLIP trained from scratch in the shapes
  world ends near scale 8, where tau 0.01 lets 0.03 cosine margins decide every class and
  fine-tuning drifts the region features away from the text embeddings (BENCHMARKS.md)."""
  path = cfg.roi_heads.get("temperature_from_checkpoint", "")
  if not path:
    return cfg
  _, params = builders.load_clip_params(path)
  if params is None or "logit_scale" not in params:
    raise ValueError(
        f"detection/finetune.py: roi_heads.temperature_from_checkpoint={path!r} holds no "
        f"CLIP logit_scale"
    )
  cfg = cfg.copy_and_resolve_references()
  cfg.roi_heads.temperature = learned_temperature(params)
  print(
      f"[finetune] classifier temperature {cfg.roi_heads.temperature:.4f} = 1 / the learned logit "
      f"scale {1.0 / cfg.roi_heads.temperature:.2f} of {path}",
      flush=True,
  )
  return cfg


def _optimizer(cfg):
  o = cfg.optimizer
  sched = optim.warmup_multistep_schedule(
      o.lr, o.warmup_steps, o.warmup_factor, tuple(o.decay_steps)
  )
  kw = dict(weight_decay=o.weight_decay, clip_norm=o.clip_norm or None)
  if o.name == "sgd":
    kw["momentum"] = o.momentum
  return optim.make_optimizer(o.name, sched, **kw)


def _pipeline(cfg, src, tf, extra=()):
  from regionclip_jax.data.pipeline import make_pipeline

  return make_pipeline(
      src, list(tf) + list(extra), batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=True
  )


def _train(cfg, workdir, step, state, data, frozen, name):
  from regionclip_jax.train.loop import train_loop
  from regionclip_jax.train.sharding import global_batch, jit_step, make_mesh

  mesh = make_mesh()
  fn, state, frozen = jit_step(step, mesh, state, frozen=frozen)
  keep = ("image", "image_size", "boxes", "box_mask", "labels")
  return train_loop(
      state=state,
      step_fn=lambda s, b: fn(s, b, frozen),
      data=data,
      num_steps=cfg.train.num_steps,
      workdir=workdir,
      put_batch=lambda b: global_batch({k: b[k] for k in keep}, mesh),
      checkpoint_every=cfg.train.checkpoint_every,
      log_every=cfg.train.log_every,
      images_per_step=cfg.train.batch_size,
      name=name,
  )


# ----------------------------------------------------------------------------- tasks


def train_rpn(cfg, workdir: str) -> dict:
  """Class-agnostic RPN on base-class boxes; exports `<workdir>/export` for later stages."""
  src, tf, names, base, _ = data_for(cfg, train=True)
  clip_cfg, clip_params = _clip_config(cfg, cfg.rpn.clip_preset, cfg.rpn.init_checkpoint)
  head = cfg.model.get("head", "c4")
  fpn_channels = cfg.model.fpn.fpn_channels if head == "fpn" else 256
  rpn, gen = builders.build_rpn(
      clip_cfg,
      anchor_sizes=tuple(cfg.rpn.anchor_sizes),
      aspect_ratios=tuple(cfg.rpn.aspect_ratios),
      stride=cfg.rpn.stride,
      freeze_at=cfg.model.freeze_at,
      dtype=cfg.model.dtype,
      head=head,
      fpn_channels=fpn_channels,
  )
  size = _pad_size(cfg)
  variables = builders.init_rpn(rpn, size, cfg.seed)
  if clip_params is not None:
    variables = builders.with_backbone(variables, clip_params)
  lookup = [base.index(n) if n in base else -1 for n in names]
  # class-agnostic: every base box is an object
  lookup = [0 if i >= 0 else -1 for i in lookup]
  tx = _optimizer(cfg)
  trainable = fpn_lib.TRAINABLE_FPN_RPN if head == "fpn" else TRAINABLE_RPN
  mask = optim.trainable_mask(variables, trainable, (FROZEN_BN_REGEX,))
  state = create_train_state(variables, tx, mask)
  step = make_rpn_step(rpn, gen, builders.rpn_settings(cfg), tx, mask, cfg.seed)
  state = _train(
      cfg, workdir, step, state, _pipeline(cfg, src, tf, [BaseLabelMap(lookup)]), None, "rpn"
  )
  meta = {
      "kind": "rpn",
      "clip_config": clip_cfg.to_dict(),
      "anchor_sizes": list(cfg.rpn.anchor_sizes),
      "aspect_ratios": list(cfg.rpn.aspect_ratios),
      "stride": cfg.rpn.stride,
      "head": head,
      "fpn_channels": fpn_channels,
  }
  if jax.process_index() == 0:
    builders.export_model(os.path.join(workdir, "export"), jax.device_get(state.params), meta)
  return {"export": os.path.join(workdir, "export")}


def _pad_size(cfg) -> int:
  if cfg.data.name == "shapes_world":
    return cfg.data.image_size
  return -(-cfg.data.max_size // 32) * 32


def load_rpn(path: str):
  """-> (RPNModel, anchor generator, variables) from an RPN workdir or its export directory."""
  d = path if builders.is_export(path) else os.path.join(path, "export")
  (rpn, gen), variables, _ = builders.load_export(d)
  return rpn, gen, variables


def train_detector(cfg, workdir: str) -> dict:
  """Fine-tune on base classes with frozen base-class text embeddings, then evaluate on all
  classes (novel embeddings swapped in) and write `<workdir>/metrics.json`."""
  if not cfg.rpn.checkpoint:
    raise ValueError(
        "detection/finetune.py: rpn.checkpoint is empty; train the offline RPN first "
        "(stage='rpn', e.g. configs/finetune.py:rpn_shapes) and point rpn.checkpoint at it"
    )
  cfg = with_classifier_temperature(cfg)
  src, tf, train_names, _, _ = data_for(cfg, train=True)
  test_src, test_tf, names, base, novel = data_for(cfg, train=False)
  clip_cfg, clip_params = _clip_config(cfg)
  det = builders.detector_from_config(cfg, clip_cfg)
  variables = builders.init_detector(det, _pad_size(cfg), cfg.seed)
  if clip_params is not None:
    variables = builders.with_backbone(variables, clip_params)
  inference = builders.inference_settings(cfg)
  head = cfg.model.get("head", "c4")
  if inference.pretrained_score_weights is not None and clip_params is None:
    raise ValueError(
        "detection/finetune.py: test.pretrained_score_weights ensembles the detector "
        "with its pretrained init, but model.init_checkpoint is empty (a random "
        "network); set it, or test.pretrained_score_weights=()"
    )
  if inference.pretrained_score_weights is not None and head != "c4":
    raise ValueError(
        "detection/finetune.py: test.pretrained_score_weights needs the C4 head (the "
        f"pretrained model's region embedding is the CLIP RoI head), got head={head!r}"
    )
  # the ensemble partner: a copy of the init taken before training (the step may donate buffers)
  pretrained = (
      jax.tree.map(jnp.copy, variables) if inference.pretrained_score_weights is not None else None
  )
  rpn, gen, rpn_vars = load_rpn(cfg.rpn.checkpoint)
  all_emb = test_class_embeddings(cfg, names, clip_cfg, clip_params)
  base_emb = (
      builders.read_embeddings(cfg.data.train_embeddings, len(base))
      if cfg.data.train_embeddings
      else all_emb[[names.index(n) for n in base]]
  )
  lookup = [base.index(n) if n in base else -1 for n in train_names]
  tx = _optimizer(cfg)
  trainable = fpn_lib.TRAINABLE_FPN_DETECTOR if head == "fpn" else TRAINABLE_DETECTOR
  mask = optim.trainable_mask(variables, trainable, (FROZEN_BN_REGEX,))
  state = create_train_state(variables, tx, mask)
  step = make_detector_step(
      det, rpn, gen, builders.roi_settings(cfg), builders.rpn_settings(cfg), tx, mask, cfg.seed
  )
  frozen = {"rpn": rpn_vars, "text_emb": jnp.asarray(base_emb)}
  state = _train(
      cfg, workdir, step, state, _pipeline(cfg, src, tf, [BaseLabelMap(lookup)]), frozen, "finetune"
  )
  params = jax.device_get(state.params)
  meta = {
      "kind": "detector",
      "clip_config": clip_cfg.to_dict(),
      "pooler_resolution": cfg.model.pooler_resolution,
      "sampling_ratio": cfg.model.sampling_ratio,
      "class_names": names,
      "base_names": base,
      "novel_names": novel,
      "head": head,
      "temperature": cfg.roi_heads.temperature,
      "fpn": dict(cfg.model.fpn) if head == "fpn" else None,
  }
  if inference.pretrained_score_weights is not None:
    meta["pretrained_score_weights"] = list(inference.pretrained_score_weights)
  if jax.process_index() == 0:
    builders.export_model(os.path.join(workdir, "export"), params, meta, pretrained)
    np.save(os.path.join(workdir, "export", "class_embeddings.npy"), all_emb)
  predictor = DetectorPredictor(
      det,
      params,
      inference,
      rpn,
      rpn_vars,
      gen,
      builders.rpn_settings(cfg),
      pretrained_variables=pretrained,
  )
  metrics = evaluate(
      predictor, test_src, test_tf, names, all_emb, base, novel, batch_size=cfg.test.batch_size
  )
  if pretrained is not None:  # the fine-tuned detector alone (the official recipe), side by side
    m = evaluate(
        predictor.without_ensemble(),
        test_src,
        test_tf,
        names,
        all_emb,
        base,
        novel,
        batch_size=cfg.test.batch_size,
    )
    metrics["without_ensemble"] = {k: m[k] for k in ("AP50_novel", "AP50_base", "AP50_all")}
    print(
        f"[finetune] without the score ensemble: AP50 novel {m['AP50_novel']:.2f} base "
        f"{m['AP50_base']:.2f} all {m['AP50_all']:.2f}",
        flush=True,
    )
  metrics["pretrained_score_weights"] = list(inference.pretrained_score_weights or ())
  if jax.process_index() == 0 and cfg.test.get("num_examples", 0) > 0:
    draw_examples(
        predictor,
        test_src,
        test_tf,
        names,
        all_emb,
        novel,
        cfg.test.num_examples,
        os.path.join(workdir, "examples.png"),
        batch_size=cfg.test.batch_size,
    )
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump({k: v for k, v in metrics.items() if k != "per_category"}, f, indent=1)
  print(
      f"[finetune] AP50 novel {metrics.get('AP50_novel')} base {metrics.get('AP50_base')} "
      f"all {metrics.get('AP50_all')}",
      flush=True,
  )
  return metrics


def zero_shot_detection(cfg) -> dict:
  """Detection with no fine-tuning (DESIGN.md §1.4, zero-shot inference): the frozen RPN's
  (`rpn.checkpoint`) proposals classified by the pretrained model's (`model.init_checkpoint`)
  region embeddings against every class's text embedding, zero background logit, proposals kept
  as they are (no box deltas were ever trained); `test.*` post-processing. -> `evaluate` metrics
  on the test split (AP50 novel / base / all)."""
  if not (cfg.model.init_checkpoint and cfg.rpn.checkpoint):
    raise ValueError(
        "detection/finetune.py: zero-shot detection needs model.init_checkpoint (a CLIP "
        "or RegionCLIP checkpoint) and rpn.checkpoint"
    )
  cfg = with_classifier_temperature(cfg)
  test_src, test_tf, names, base, novel = data_for(cfg, train=False)
  clip_cfg, clip_params = _clip_config(cfg)
  det = builders.detector_from_config(cfg, clip_cfg)
  variables = builders.with_backbone(
      builders.init_detector(det, _pad_size(cfg), cfg.seed), clip_params
  )
  rpn, gen, rpn_vars = load_rpn(cfg.rpn.checkpoint)
  emb = test_class_embeddings(cfg, names, clip_cfg, clip_params)
  settings = dataclasses.replace(
      builders.inference_settings(cfg), apply_deltas=False, pretrained_score_weights=None
  )  # the model is its own init
  predictor = DetectorPredictor(
      det, variables, settings, rpn, rpn_vars, gen, builders.rpn_settings(cfg)
  )
  return evaluate(
      predictor, test_src, test_tf, names, emb, base, novel, batch_size=cfg.test.batch_size
  )


# ----------------------------------------------------------------------------- evaluation


def draw_examples(
    predictor: DetectorPredictor,
    source,
    transforms,
    class_names: Sequence[str],
    text_emb,
    novel_names: Sequence[str],
    num: int,
    path: str,
    score_threshold: float = 0.3,
    batch_size: Optional[int] = None,
) -> np.ndarray:
  """A PNG grid of the first `num` test scenes: ground truth (left) and detections scoring
  >= score_threshold (right), novel classes in the novel colour. `batch_size`: pad the batch to
  the evaluation's, whose compiled programs are then reused. -> the grid [H, W, 3] uint8."""
  from PIL import Image
  from regionclip_jax.data.transforms import apply_transforms
  from regionclip_jax.evaluation.visualize import draw_detections

  recs = [apply_transforms(source[i], transforms) for i in range(min(num, len(source)))]
  padded = recs + [recs[-1]] * max(0, (batch_size or 0) - len(recs))
  b = {
      k: np.stack([np.asarray(r[k]) for r in padded])
      for k in ("image", "image_size", "boxes", "box_mask", "labels")
  }
  out = predictor(
      b["image"], b["image_size"], text_emb, seen=[n not in novel_names for n in class_names]
  )
  rows = []
  for i in range(len(recs)):
    kw = dict(class_names=class_names, novel_names=novel_names, clip_normalised=True)
    gt = draw_detections(b["image"][i], b["boxes"][i], b["labels"][i], valid=b["box_mask"][i], **kw)
    det = draw_detections(
        b["image"][i],
        out["boxes"][i],
        out["classes"][i],
        out["scores"][i],
        valid=out["valid"][i],
        score_threshold=score_threshold,
        **kw,
    )
    gap = np.full((gt.shape[0], 8, 3), 255, np.uint8)
    rows.append(np.concatenate([gt, gap, det], axis=1))
  sep = np.full((8, rows[0].shape[1], 3), 255, np.uint8)
  grid = np.concatenate([x for r in rows for x in (r, sep)][:-1], axis=0)
  Image.fromarray(grid).save(path)
  return grid


def records_to_coco_gt(batches: Sequence[dict], class_names: Sequence[str]) -> dict:
  """Padded batches (`image_id`, `image_size`, `boxes`, `box_mask`, `labels` as class indices)
  -> COCO ground-truth dict with category ids = class index + 1."""
  images, anns = [], []
  for b in batches:
    for i in range(len(b["image_id"])):
      h, w = (int(x) for x in b["image_size"][i])
      iid = int(b["image_id"][i])
      images.append({"id": iid, "height": h, "width": w})
      for box, lab, m in zip(b["boxes"][i], b["labels"][i], b["box_mask"][i]):
        if m and lab >= 0:
          x1, y1, x2, y2 = (float(v) for v in box)
          anns.append(
              {
                  "id": len(anns) + 1,
                  "image_id": iid,
                  "category_id": int(lab) + 1,
                  "bbox": [x1, y1, x2 - x1, y2 - y1],
                  "area": (x2 - x1) * (y2 - y1),
                  "iscrowd": 0,
              }
          )
  cats = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
  return {"images": images, "annotations": anns, "categories": cats}


def evaluate(
    predictor: DetectorPredictor,
    source,
    transforms,
    class_names: Sequence[str],
    text_emb,
    base_names: Sequence[str],
    novel_names: Sequence[str],
    *,
    batch_size: int = 8,
    use_gt_boxes: bool = False,
    max_images: Optional[int] = None,
) -> dict:
  """Detect on every record of `source` with the whole vocabulary and score with pycocotools:
  the standard COCO stats plus AP50_novel / AP50_base / AP50_all. `use_gt_boxes`: classify the
  ground-truth boxes instead of RPN proposals (zero-shot region recognition protocol)."""
  from regionclip_jax.data.transforms import apply_transforms
  from regionclip_jax.evaluation.coco_eval import evaluate_coco
  from regionclip_jax.evaluation.detections_io import detections_to_coco

  n = len(source) if max_images is None else min(len(source), max_images)
  batches, dets = [], []
  cats = [{"id": i + 1, "name": c} for i, c in enumerate(class_names)]
  seen = np.asarray([c in base_names for c in class_names])
  for start in range(0, n, batch_size):
    recs = [
        apply_transforms(source[i], transforms) for i in range(start, min(n, start + batch_size))
    ]
    pad = batch_size - len(recs)
    recs = recs + [recs[-1]] * pad  # static batch shape; padded copies are dropped below
    b = {
        k: np.stack([np.asarray(r[k]) for r in recs])
        for k in ("image", "image_size", "boxes", "box_mask", "labels", "image_id")
    }
    boxes = b["boxes"] if use_gt_boxes else None
    out = predictor(
        b["image"],
        b["image_size"],
        text_emb,
        boxes=boxes,
        box_valid=b["box_mask"] if use_gt_boxes else None,
        seen=seen,
    )
    keep = slice(0, batch_size - pad)
    b = {k: v[keep] for k, v in b.items()}
    batches.append(b)
    dets += detections_to_coco(
        b["image_id"],
        out["boxes"][keep],
        out["scores"][keep],
        out["classes"][keep],
        out["valid"][keep],
        cats,
    )
  gt = records_to_coco_gt(batches, class_names)
  return evaluate_coco(
      gt, dets, split=None, base_names=list(base_names), novel_names=list(novel_names)
  )
