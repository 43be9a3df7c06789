"""The detection tasks (config -> trained / evaluated model) behind `detection.run` / the pipeline.

  train_rpn(cfg, workdir)       stage "rpn": offline class-agnostic RPN on base boxes -> export/
  train_detector(cfg, workdir)  stage "finetune": open-vocabulary detector on base classes with
                                the frozen RPN's proposals -> export/ + metrics.json (AP50 novel /
                                base / all)
  zero_shot_detection(cfg)      no fine-tuning: the pretrained model on the RPN's proposals ->
                                metrics (the pipeline's zero-shot row)

Training runs on the shared infrastructure (train.loop / train.sharding / train.checkpoint); data
comes from `detection.data`, scoring from `detection.evaluate`, the zero-shot model from
`detection.zero_shot` (docs/design.md, "Detector transfer").
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax import files
from regionclip_jax.data.pipeline import make_pipeline
from regionclip_jax.data.transforms import DETECTION_KEYS
from regionclip_jax.detection import builders, export
from regionclip_jax.detection import fpn as fpn_lib
from regionclip_jax.detection.data import BaseLabelMap, data_for, pad_size
from regionclip_jax.detection.evaluate import draw_examples, evaluate
from regionclip_jax.detection.predictor import DetectorPredictor
from regionclip_jax.detection.train_lib import make_detector_step, make_rpn_step
from regionclip_jax.detection.zero_shot import zero_shot_predictor
from regionclip_jax.models.clip import (
    FROZEN_BN_REGEX,
    CLIPConfig,
    get_config as clip_preset,
    learned_temperature,
)
from regionclip_jax.train import optimizer as optim
from regionclip_jax.train.loop import train_loop
from regionclip_jax.train.sharding import global_batch, jit_step, make_mesh
from regionclip_jax.train.state import create_train_state

# FREEZE_AT 2: stem (conv1-3 + their BN) and res2 (layer1) never train; FrozenBN never trains.
TRAINABLE_DETECTOR = (r"backbone/visual/(layer[234]|attnpool)/", r"bbox_pred/")
TRAINABLE_RPN = (r"backbone/visual/(layer[23])/", r"rpn_head/")
# What the training steps read; the padding mask (the model sees padded images, as detectron2's)
# and the image ids stay on the host.
STEP_KEYS = tuple(k for k in DETECTION_KEYS if k not in ("image_mask", "image_id"))


def detector_trainable_mask(cfg, variables, head: str = "c4"):
  """Bool tree of what detector fine-tuning updates: TRAINABLE_DETECTOR (FPN: its own list)
  less FrozenBN and the regexes of `model.frozen` (e.g. "attnpool/" keeps the attention pool at
  its init). A `model.frozen` pattern that matches no trainable parameter is an error (a typo
  would otherwise train everything)."""
  trainable = fpn_lib.TRAINABLE_FPN_DETECTOR if head == "fpn" else TRAINABLE_DETECTOR
  extra = tuple(cfg.model.get("frozen", ()))
  count = lambda frozen: sum(jax.tree.leaves(optim.trainable_mask(variables, trainable, frozen)))
  everything = count((FROZEN_BN_REGEX,))
  for pat in extra:
    if count((FROZEN_BN_REGEX, pat)) == everything:
      raise ValueError(
          f"{__name__}: model.frozen pattern {pat!r} matches no trainable parameter (trainable: "
          f"{trainable})"
      )
  return optim.trainable_mask(variables, trainable, (FROZEN_BN_REGEX, *extra))


# ----------------------------------------------------------------------------- models


def _clip_config(cfg, preset: str = "", path: str = "") -> tuple[CLIPConfig, Any]:
  """Architecture + (optional) CLIP params from `path` (default model.init_checkpoint)."""
  path = path or cfg.model.init_checkpoint
  if path and export.is_export(path):
    _, variables, meta = export.load_export(path, "detector")
    return CLIPConfig.from_dict(meta["clip_config"]), variables["params"]["backbone"]
  if path:
    return builders.load_clip_params(path, cfg.model.init_source or None)
  return clip_preset(preset or cfg.model.clip_preset), None


def class_text_embeddings(
    cfg, names: Sequence[str], path: str, clip_cfg, clip_params
) -> np.ndarray:
  """[K, D]: from an .npy / official .pth file, else the CLIP text tower (81-template mean), else
  (no text weights: shapes world from scratch) fixed random vectors, flagged in the log."""
  if path:
    return builders.read_embeddings(path, len(names), clip_cfg.embed_dim)
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
  fine-tuning drifts the region features away from the text embeddings (docs/findings.md, "Classifier temperature").
  """
  path = cfg.roi_heads.get("temperature_from_checkpoint", "")
  if not path:
    return cfg
  _, params = builders.load_clip_params(path)
  if params is None or "logit_scale" not in params:
    raise ValueError(
        f"{__name__}: roi_heads.temperature_from_checkpoint={path!r} holds no CLIP logit_scale"
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
  return make_pipeline(
      src,
      list(tf) + list(extra),
      batch_size=cfg.train.batch_size,
      seed=cfg.seed,
      shuffle=True,
      num_threads=cfg.data.num_threads,
      num_workers=cfg.data.num_workers,
  )


def _train(cfg, workdir, step, state, data, frozen, name):
  mesh = make_mesh(cfg.train.num_devices, "train.num_devices")
  fn, state, frozen = jit_step(step, mesh, state, frozen=frozen)
  return train_loop(
      state=state,
      step_fn=lambda s, b: fn(s, b, frozen),
      data=data,
      num_steps=cfg.train.num_steps,
      workdir=workdir,
      put_batch=lambda b: global_batch({k: b[k] for k in STEP_KEYS}, mesh),
      checkpoint_every=cfg.train.checkpoint_every,
      log_every=cfg.train.log_every,
      images_per_step=cfg.train.batch_size,
      name=name,
  )


# ----------------------------------------------------------------------------- tasks


def rpn_trained(workdir: str) -> bool:
  """Whether `train_rpn` finished into `workdir` (its export's marker file exists)."""
  return export.is_export(os.path.join(workdir, "export"))


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
  size = pad_size(cfg)
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
    export.export_model(os.path.join(workdir, "export"), jax.device_get(state.params), meta)
  return {"export": os.path.join(workdir, "export")}


def train_detector(cfg, workdir: str, extra_metrics=None) -> dict:
  """Fine-tune on base classes with frozen base-class text embeddings, then evaluate on all
  classes (novel embeddings swapped in) and write `<workdir>/metrics.json`. `extra_metrics`: a
  callable -> dict of further entries (e.g. proposal recall, data issues), called after the
  evaluation so that metrics.json is written once with everything."""
  if not cfg.rpn.checkpoint:
    raise ValueError(
        f"{__name__}: rpn.checkpoint is empty; train the offline RPN first "
        "(stage='rpn', e.g. configs/finetune.py:rpn_shapes) and point rpn.checkpoint at it"
    )
  cfg = with_classifier_temperature(cfg)
  src, tf, train_names, _, _ = data_for(cfg, train=True)
  test_src, test_tf, names, base, novel = data_for(cfg, train=False)
  clip_cfg, clip_params = _clip_config(cfg)
  det = builders.detector_from_config(cfg, clip_cfg)
  variables = builders.init_detector(det, pad_size(cfg), cfg.seed)
  if clip_params is not None:
    variables = builders.with_backbone(variables, clip_params)
  inference = builders.inference_settings(cfg)
  head = cfg.model.get("head", "c4")
  if inference.pretrained_score_weights is not None and clip_params is None:
    raise ValueError(
        f"{__name__}: test.pretrained_score_weights ensembles the detector "
        "with its pretrained init, but model.init_checkpoint is empty (a random "
        "network); set it, or test.pretrained_score_weights=()"
    )
  if inference.pretrained_score_weights is not None and head != "c4":
    raise ValueError(
        f"{__name__}: test.pretrained_score_weights needs the C4 head (the "
        f"pretrained model's region embedding is the CLIP RoI head), got head={head!r}"
    )
  # the ensemble partner: a copy of the init taken before training (the step may donate buffers)
  pretrained = (
      jax.tree.map(jnp.copy, variables) if inference.pretrained_score_weights is not None else None
  )
  rpn, gen, rpn_vars = export.load_rpn(cfg.rpn.checkpoint, cfg.rpn.get("checkpoint_arch", ""))
  all_emb = test_class_embeddings(cfg, names, clip_cfg, clip_params)
  base_emb = (
      builders.read_embeddings(cfg.data.train_embeddings, len(base), clip_cfg.embed_dim)
      if cfg.data.train_embeddings
      else all_emb[[names.index(n) for n in base]]
  )
  lookup = [base.index(n) if n in base else -1 for n in train_names]
  tx = _optimizer(cfg)
  mask = detector_trainable_mask(cfg, variables, head)
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
    export.export_model(
        os.path.join(workdir, "export"), params, meta, pretrained, {"class_embeddings": all_emb}
    )
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
  # with the score ensemble, the fine-tuned detector alone (the official recipe) side by side,
  # scored from the same pass
  metrics = evaluate(
      predictor,
      test_src,
      test_tf,
      names,
      all_emb,
      base,
      novel,
      batch_size=cfg.test.batch_size,
      also_alone=True,
  )
  if "without_ensemble" in metrics:
    m = metrics["without_ensemble"]
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
  if extra_metrics is not None:
    metrics.update(extra_metrics())
  if jax.process_index() == 0:
    with files.atomic_open(os.path.join(workdir, "metrics.json")) as f:
      json.dump({k: v for k, v in metrics.items() if k != "per_category"}, f, indent=1)
  print(
      f"[finetune] AP50 novel {metrics.get('AP50_novel')} base {metrics.get('AP50_base')} "
      f"all {metrics.get('AP50_all')}",
      flush=True,
  )
  return metrics


def zero_shot_detection(cfg, use_gt_boxes: bool = False) -> dict:
  """Detection with no fine-tuning (docs/design.md, "Detector transfer"): the frozen RPN's
  (`rpn.checkpoint`) proposals classified by the pretrained model's (`model.init_checkpoint`)
  region embeddings against every class's text embedding (`zero_shot.zero_shot_predictor`);
  `test.*` post-processing. -> `evaluate` metrics on the test split (AP50 novel / base / all).
  `use_gt_boxes`: the ground-truth boxes instead of the proposals, which leaves recognition alone
  (what proposals add is how the scores rank boxes off the objects)."""
  if not (cfg.model.init_checkpoint and cfg.rpn.checkpoint):
    raise ValueError(
        f"{__name__}: zero-shot detection needs model.init_checkpoint (a CLIP "
        "or RegionCLIP checkpoint) and rpn.checkpoint"
    )
  cfg = with_classifier_temperature(cfg)
  test_src, test_tf, names, base, novel = data_for(cfg, train=False)
  clip_cfg, clip_params = _clip_config(cfg)
  det = builders.detector_from_config(cfg, clip_cfg)
  predictor = zero_shot_predictor(
      det,
      clip_params,
      builders.inference_settings(cfg),
      cfg.rpn.checkpoint,
      builders.rpn_settings(cfg),
      image_size=pad_size(cfg),
      seed=cfg.seed,
  )
  emb = test_class_embeddings(cfg, names, clip_cfg, clip_params)
  return evaluate(
      predictor,
      test_src,
      test_tf,
      names,
      emb,
      base,
      novel,
      batch_size=cfg.test.batch_size,
      use_gt_boxes=use_gt_boxes,
  )
