"""The pretraining job behind `python -m regionclip_jax.main --config=configs/pretrain.py`.

Shapes world (default): CLIP stage -> teacher (<workdir>/teacher, skipped when it exists), student
initialised from the teacher, RegionCLIP pretraining (<workdir>/checkpoints), the student saved
in the converted CLIP format (<workdir>/student), zero-shot region recognition with GT boxes on
held-out scenes (teacher vs. student [vs. control], base / novel top-1) -> <workdir>/metrics.json.
Real data (tsv / coco_captions): the same with a given teacher checkpoint and concept embeddings.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections

from regionclip_jax.models import clip as clip_lib
from regionclip_jax.pretrain.clip_pretrain import (
    BATCH_NORM_MODES,
    BN_STATISTICS_REGEX,
    calibrate_frozen_bn,
    make_clip_step,
)
from regionclip_jax.pretrain import prompts
from regionclip_jax.pretrain.proposals import make_proposal_fn
from regionclip_jax.pretrain.step import LossConfig, make_pretrain_step
from regionclip_jax.pretrain.zero_shot import evaluate_regions, make_region_logits_fn
from regionclip_jax.train import optimizer as opt
from regionclip_jax.train.loop import train_loop
from regionclip_jax.train.sharding import global_batch, jit_step, make_mesh
from regionclip_jax.train.state import create_train_state

WHERE = "configs/pretrain.py"
PyTree = Any


# -- config helpers ----------------------------------------------------------------------------


def validate(config: ml_collections.ConfigDict) -> None:
  def choice(v, options, key):
    if v not in options:
      raise ValueError(f"{WHERE}: {key}={v!r} is not one of {list(options)}")

  choice(config.data.source, ("shapes_world", "tsv", "coco_captions"), "data.source")
  choice(config.proposals.kind, ("boxes_jitter", "random", "rpn"), "proposals.kind")
  choice(config.model.dtype, ("float32", "bfloat16"), "model.dtype")
  choice(config.sharding.mode, ("replicate", "fsdp"), "sharding.mode")
  choice(config.optimizer.clip_type, ("per_tensor", "global"), "optimizer.clip_type")
  choice(config.teacher_stage.batch_norm, BATCH_NORM_MODES, "teacher_stage.batch_norm")
  for k in ("student", "teacher"):
    if config.model[k] not in clip_lib.PRESETS:
      raise ValueError(
          f"{WHERE}: model.{k}={config.model[k]!r} is not a CLIP preset; valid: "
          f"{sorted(clip_lib.PRESETS)}"
      )
  n_proc = jax.process_count()
  if config.batch_size % (config.loss.group_size * n_proc):
    raise ValueError(
        f"{WHERE}: batch_size={config.batch_size} must be a multiple of "
        f"loss.group_size={config.loss.group_size} x {n_proc} processes"
    )
  if (
      config.proposals.kind == "rpn"
      and not config.proposals.rpn_checkpoint
      and not (config.data.source == "shapes_world" and config.get("rpn_stage") is not None)
  ):
    raise ValueError(
        f"{WHERE}: proposals.kind='rpn' (official) needs proposals.rpn_checkpoint, a "
        "base-class RPN from the detection task's stage 'rpn'; or set proposals.kind="
        "'random'"
    )
  if config.proposals.kind == "boxes_jitter" and config.data.source != "shapes_world":
    raise ValueError(
        f"{WHERE}: proposals.kind='boxes_jitter' needs GT boxes (data.source="
        f"'shapes_world'); use 'random' or 'rpn' for {config.data.source!r}"
    )


def default_workdir(config) -> str:
  return os.path.join(
      tempfile.gettempdir(), "regionclip_jax", f"pretrain_{config.preset or 'custom'}"
  )


def _dtype(name: str):
  return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def _word_tokenize(texts, context_length: int = 77) -> np.ndarray:
  """Stand-in used only when the BPE tokenizer is unavailable (shapes world): sot, one stable
  hashed id per lower-cased word, eot (the largest id, so EOT pooling finds it), 0 padding."""
  import re

  out = np.zeros((len(texts), context_length), np.int32)
  for i, t in enumerate(texts):
    words = re.findall(r"[a-z]+|[^a-z\s]", t.lower())[: context_length - 2]
    ids = [49406] + [1 + zlib.crc32(w.encode()) % 49000 for w in words] + [49407]
    out[i, : len(ids)] = ids
  return out


def _tokenizer(source: str):
  """The OpenAI BPE tokenizer, built once here in the main thread (transformers' lazy imports
  are not safe to trigger first from grain's reader threads)."""
  try:
    from regionclip_jax.models.tokenizer import tokenize  # models area; OpenAI BPE ids

    tokenize(["warm up"], context_length=77)
    return tokenize
  except Exception as e:  # noqa: BLE001 - any failure: fall back for the shapes world only
    if source != "shapes_world":
      raise
    _log(
        f"[pretrain] warning: BPE tokenizer unavailable ({type(e).__name__}: {e}); using a "
        "word-hash tokenizer (fine for the shapes world, which has its own small vocabulary)"
    )
    return _word_tokenize


def _with_context(tokenize, context_length: int):
  """Tokens of a fixed length (<= 77; short captions need no 77-token text pass)."""

  def fn(texts, context_length_ignored: int = 77, **kw):
    del context_length_ignored, kw
    return tokenize(list(texts), context_length=context_length)

  return fn


def _to_host(tree):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


# -- data --------------------------------------------------------------------------------------


def _shapes_sources(config):
  from regionclip_jax.data.pipeline import CachedSource
  from regionclip_jax.data.shapes_world import ShapesWorld

  d = config.data
  # cached: after the first epoch a batch costs memory reads, not ~1.5 ms of generation a scene
  # on the cores the step needs (BENCHMARKS.md, input pipeline)
  train = CachedSource(ShapesWorld(d.num_train_scenes, d.image_size, seed=config.seed))
  evals = ShapesWorld(d.num_eval_scenes, d.image_size, seed=d.eval_seed)
  return train, evals


def _train_iterator(config, source, batch_size: int, tokenize, seed_offset: int = 0):
  from regionclip_jax.data import pipeline, transforms as T

  d = config.data
  if d.source == "shapes_world":
    tf = T.shapes_world_transforms(
        image_size=d.image_size, max_boxes=d.max_boxes, flip=d.flip, tokenize_fn=tokenize
    )
  else:
    tf = T.pretrain_transforms(
        short_edge_lengths=tuple(d.short_edge_lengths),
        max_size=d.max_size,
        flip=d.flip,
        tokenize_fn=tokenize,
    )
  per_process = batch_size // jax.process_count()
  return pipeline.make_pipeline(
      source,
      tf,
      batch_size=per_process,
      seed=config.seed + seed_offset,
      shuffle=True,
      num_threads=d.num_threads,
  )


def _real_source(config):
  d = config.data
  if d.source == "tsv":
    from regionclip_jax.data.image_text import TsvImageText

    if not d.image_tsv or not d.text_tsv:
      raise ValueError(f"{WHERE}: data.source='tsv' needs data.image_tsv and data.text_tsv")
    return TsvImageText(d.image_tsv, d.text_tsv, policy="skip")
  from regionclip_jax.data.coco import CocoCaptions

  if not d.coco_captions or not d.coco_image_dir:
    raise ValueError(
        f"{WHERE}: data.source='coco_captions' needs data.coco_captions and data.coco_image_dir"
    )
  return CocoCaptions(d.coco_captions, d.coco_image_dir, policy="skip")


def _put(keys):
  def put(batch):
    return global_batch({k: batch[k] for k in keys if k in batch}, MESH[0])

  return put


MESH: list = []


# -- stages ------------------------------------------------------------------------------------


def train_clip_stage(
    config,
    cfg: clip_lib.CLIPConfig,
    params: PyTree,
    source,
    tokenize,
    workdir: str,
    num_steps: int,
    name: str,
    batch_size: int | None = None,
    seed_offset: int | None = None,
) -> PyTree:
  """Image-level CLIP training of both towers (`teacher_stage` settings) -> host params.

  With teacher_stage.batch_norm="train" the image tower's BN trains as in CLIP and its
  population statistics are then re-estimated on `calibration_images` training images, so the
  saved tower runs with frozen BN like any CLIP checkpoint. `batch_size` / `seed_offset` default
  to the teacher stage's; the matched-compute control passes the student's, so that it sees the
  student's images in the student's order.
  """
  ts = config.teacher_stage
  batch_size = batch_size or ts.batch_size
  if seed_offset is None:
    seed_offset = zlib.crc32(name.encode()) % 1000
  model = clip_lib.CLIP(cfg, dtype=_dtype(config.model.dtype), remat=config.model.remat)
  sched = opt.warmup_multistep_schedule(ts.lr, ts.warmup_steps, 0.01, tuple(ts.decay_steps))
  tx = opt.make_optimizer("adamw", sched, weight_decay=ts.weight_decay, clip_norm=1.0)
  frozen = BN_STATISTICS_REGEX if ts.batch_norm == "train" else clip_lib.FROZEN_BN_REGEX
  mask = opt.trainable_mask(params, trainable=(".*",), frozen=(frozen,))
  state = create_train_state(params, tx, mask)
  fn, state, _ = jit_step(
      make_clip_step(model, tx, mask, batch_norm=ts.batch_norm),
      MESH[0],
      state,
      mode=config.sharding.mode,
      min_size=config.sharding.fsdp_min_size,
  )
  data = _train_iterator(config, source, batch_size, tokenize, seed_offset=seed_offset)
  state = train_loop(
      state=state,
      step_fn=lambda s, b: fn(s, b, None),
      data=data,
      num_steps=num_steps,
      workdir=workdir,
      put_batch=_put(("image", "caption_tokens")),
      checkpoint_every=max(1, min(config.checkpoint_every, num_steps)),
      keep_checkpoints=config.keep_checkpoints,
      async_checkpoints=config.async_checkpoints,
      log_every=ts.log_every,
      images_per_step=batch_size,
      name=name,
  )
  params = _to_host(state.params)
  if ts.batch_norm == "train":
    images = _calibration_images(config, source, ts.calibration_images)
    params = jax.tree.map(np.asarray, calibrate_frozen_bn(model, params, jnp.asarray(images)))
    _log(f"[{name}] BN statistics re-estimated on {len(images)} training images")
  return params


def _calibration_images(config, source, n: int) -> np.ndarray:
  """The first n training scenes, normalised as in training: [n, H, W, 3] float32."""
  from regionclip_jax.data import pipeline, transforms as T

  d = config.data
  tf = T.shapes_world_transforms(image_size=d.image_size, max_boxes=d.max_boxes, captions=False)
  n = min(n, len(source))
  it = pipeline.make_pipeline(
      source,
      tf,
      batch_size=n,
      shuffle=False,
      num_epochs=1,
      shard_by_process=False,
      num_threads=d.num_threads,
      batch_prefetch=0,
  )
  return np.asarray(next(iter(it))["image"], np.float32)


def clip_stage_cached(
    config, cfg, params, source, tokenize, workdir: str, num_steps: int, name: str, **kw
) -> PyTree:
  """train_clip_stage, skipped when <workdir>/final exists (then loaded); saves <workdir>/final."""
  final = os.path.join(workdir, "final")
  if os.path.exists(os.path.join(final, "config.json")):
    _log(f"[{name}] found {final}")
    return jax.tree.map(np.asarray, clip_lib.load(final).params)
  params = train_clip_stage(config, cfg, params, source, tokenize, workdir, num_steps, name, **kw)
  _save_clip(final, cfg, params, f"shapes_world_{name}_stage")
  return params


def _save_clip(path: str, cfg, params, source: str) -> None:
  if jax.process_index() == 0:
    from regionclip_jax.models.checkpoints import save_converted

    save_converted(path, cfg, params, source=source)


def get_teacher(config, workdir: str, tokenize, train_source):
  """-> (CLIPConfig, host params): the given checkpoint, or <workdir>/teacher/final, or trained now."""
  if config.model.teacher_checkpoint:
    loaded = clip_lib.load(config.model.teacher_checkpoint)
    return loaded.config, jax.tree.map(np.asarray, loaded.params)
  final = os.path.join(workdir, "teacher", "final")
  if os.path.exists(os.path.join(final, "config.json")):
    _log(f"[pretrain] teacher found at {final}")
    loaded = clip_lib.load(final)
    return loaded.config, jax.tree.map(np.asarray, loaded.params)
  if config.data.source != "shapes_world" or config.teacher_stage.num_steps <= 0:
    raise ValueError(
        f"{WHERE}: no teacher: set model.teacher_checkpoint (a CLIP checkpoint), or use "
        f"data.source='shapes_world' with teacher_stage.num_steps > 0"
    )
  cfg = clip_lib.get_config(config.model.teacher)
  _log(
      f"[pretrain] no teacher checkpoint: training an image-level CLIP teacher "
      f"({config.model.teacher}, {config.teacher_stage.num_steps} steps) into {final}"
  )
  params = jax.tree.map(np.asarray, clip_lib.init_params(cfg, seed=config.seed))
  params = clip_stage_cached(
      config,
      cfg,
      params,
      train_source,
      tokenize,
      os.path.join(workdir, "teacher"),
      config.teacher_stage.num_steps,
      "teacher",
  )
  return cfg, params


def train_teacher(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Only the image-level teacher stage (shapes world) -> its converted dir <workdir>/teacher/final
  (skipped when it exists). The full pipeline runs it before the RPN, which starts from it."""
  if config.data.source != "shapes_world":
    raise ValueError(
        f"{WHERE}: train_teacher trains on the shapes world only (data.source="
        f"{config.data.source!r}); give real runs a model.teacher_checkpoint"
    )
  MESH[:] = [make_mesh()]
  tokenize = _with_context(_tokenizer(config.data.source), config.data.context_length)
  train_source, _ = _shapes_sources(config)
  get_teacher(config, workdir, tokenize, train_source)
  return os.path.join(workdir, "teacher", "final")


def get_rpn(config: ml_collections.ConfigDict, workdir: str, teacher: str) -> str:
  """-> the frozen proposal RPN: proposals.rpn_checkpoint, or (shapes world) a class-agnostic RPN
  on base boxes trained now with the `rpn_stage` config (configs/finetune.py:rpn_shapes), its
  backbone initialised from the teacher `teacher` (any clip.load path), into <workdir>/rpn
  (skipped when its export exists)."""
  if config.proposals.rpn_checkpoint:
    return config.proposals.rpn_checkpoint
  rpn_dir = os.path.join(workdir, "rpn")
  if os.path.isdir(os.path.join(rpn_dir, "export")):
    _log(f"[pretrain] RPN found at {rpn_dir}")
    return rpn_dir
  from regionclip_jax.detection import finetune  # detection area

  rc = config.rpn_stage.copy_and_resolve_references()
  rc.seed = config.seed
  rc.rpn.init_checkpoint = teacher
  _log(
      f"[pretrain] no RPN checkpoint: training a class-agnostic RPN on base boxes "
      f"({rc.train.num_steps} steps, backbone from the teacher) into {rpn_dir}"
  )
  finetune.train_rpn(rc, rpn_dir)
  return rpn_dir


def concept_pool(config, teacher_cfg, teacher_params, tokenize, names):
  """-> [C, D] float32 unnormalised 81-template means from the (frozen) teacher text tower."""
  if config.model.concept_embeddings:
    emb = np.load(config.model.concept_embeddings).astype(np.float32)
    if emb.ndim != 2 or emb.shape[1] != teacher_cfg.embed_dim:
      raise ValueError(
          f"{config.model.concept_embeddings}: concept embeddings must be [C, "
          f"{teacher_cfg.embed_dim}], got {emb.shape}"
      )
    return emb
  if config.model.concepts_file:
    names = prompts.read_concepts_file(config.model.concepts_file)
  if not names:
    raise ValueError(
        f"{WHERE}: no concept pool: set model.concept_embeddings (.npy) or model.concepts_file"
    )
  model = clip_lib.CLIP(teacher_cfg)
  enc = jax.jit(lambda p, t: model.apply({"params": p}, t, method=clip_lib.CLIP.encode_text))
  return prompts.concept_embeddings(
      lambda t: enc(teacher_params, jnp.asarray(t)), names, tokenize, batch_size=81
  )


def evaluate(config, models: dict, eval_source, tokenize, concept_emb, base_ids, novel_ids) -> dict:
  """Zero-shot region top-1 with GT boxes for each (name -> (CLIPConfig, host params)); when a
  "student" is among them, also its paired difference to every other model (same regions):
  out["student_minus_<name>"] = {all, se_all, base, se_base, novel, se_novel}."""
  from regionclip_jax.data import pipeline, transforms as T
  from regionclip_jax.evaluation.region_metrics import paired_difference

  d = config.data
  tf = T.shapes_world_transforms(image_size=d.image_size, max_boxes=d.max_boxes, captions=False)
  bs = min(config.eval.batch_size, len(eval_source))
  out, outcomes = {}, {}
  for name, (cfg, params) in models.items():
    it = pipeline.make_pipeline(
        eval_source,
        tf,
        batch_size=bs,
        shuffle=False,
        num_epochs=1,
        shard_by_process=False,
        num_threads=d.num_threads,
        batch_prefetch=0,
    )
    fn = make_region_logits_fn(clip_lib.CLIP(cfg), _region_kw(config))
    out[name], outcomes[name] = evaluate_regions(
        fn, params, it, concept_emb, base_ids, novel_ids, return_correct=True
    )
  if "student" in outcomes:
    correct_s, labels = outcomes["student"]
    groups = {
        "all": np.ones(labels.shape, bool),
        "base": np.isin(labels, base_ids),
        "novel": np.isin(labels, novel_ids),
    }
    for other in [m for m in outcomes if m != "student"]:
      diff = {}
      for g, sel in groups.items():
        diff[g], diff[f"se_{g}"] = paired_difference(correct_s[sel], outcomes[other][0][sel])
      out[f"student_minus_{other}"] = diff
  return out


def _region_kw(config) -> dict:
  m = config.model
  return dict(
      pooler_resolution=m.pooler_resolution or None,
      roi_method=m.roi_method,
      chunk_size=m.roi_chunk_size,
  )


def format_region_table(acc: dict, num_concepts: int) -> str:
  """Printable table of `evaluate`'s output (accuracies and paired differences in points)."""
  lines = [
      f"[pretrain] zero-shot region recognition, GT boxes, held-out scenes (top-1 over "
      f"{num_concepts} concepts, % +- 1 se):"
  ]
  for name, a in acc.items():
    if name.startswith("student_minus_"):
      lines.append(
          f"  {name:22s}"
          + "  ".join(
              f"{g} {100 * a[g]:+6.1f} +- {100 * a['se_' + g]:.1f}"
              for g in ("all", "base", "novel")
          )
          + "  (paired)"
      )
    else:
      lines.append(
          f"  {name:22s}"
          + "  ".join(
              f"{g} {100 * a[g]:6.1f} +- {100 * a['se_' + g]:.1f}" for g in ("all", "base", "novel")
          )
          + f"  (n = {a['n_all']} regions)"
      )
  return "\n".join(lines)


def _figures(workdir: str, acc: dict) -> None:
  """region_recognition.png (bars +- 1 se) and loss curves of every stage that logged any."""
  if jax.process_index() != 0:
    return
  from regionclip_jax.evaluation import visualize

  models = {k: v for k, v in acc.items() if not k.startswith("student_minus_")}
  visualize.region_recognition_chart(
      models,
      title="zero-shot region recognition (GT boxes)",
      path=os.path.join(workdir, "region_recognition.png"),
  )
  for stage, sub in (("regionclip", ""), ("teacher", "teacher"), ("control", "control")):
    log = os.path.join(workdir, sub, "tensorboard", "metrics.jsonl")
    if os.path.exists(log):
      visualize.loss_curves(
          log, title=f"{stage} training", path=os.path.join(workdir, f"loss_{stage}.png")
      )


# -- the job -----------------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str | None = None) -> dict:
  validate(config)
  workdir = os.path.abspath(workdir or config.workdir or default_workdir(config))
  os.makedirs(workdir, exist_ok=True)
  _log(f"[pretrain] workdir: {workdir}")
  t0 = time.time()
  MESH[:] = [make_mesh()]
  tokenize = _with_context(_tokenizer(config.data.source), config.data.context_length)
  if config.data.source == "shapes_world":
    train_source, eval_source = _shapes_sources(config)
    names = list(eval_source.concepts)
  else:
    train_source, eval_source, names = _real_source(config), None, []

  teacher_cfg, teacher_params = get_teacher(config, workdir, tokenize, train_source)
  concept_emb = concept_pool(config, teacher_cfg, teacher_params, tokenize, names)
  _log(f"[pretrain] concept pool: {concept_emb.shape[0]} concepts x {concept_emb.shape[1]}")
  twins = []
  if names and len(names) == concept_emb.shape[0]:
    twins = prompts.similar_concepts(concept_emb, names)
    if twins:
      _log(
          f"[pretrain] warning: {len(twins)} concept pair(s) have near-identical text embeddings "
          f"(cosine >= 0.95), so no image model can tell them apart with this text tower: "
          + ", ".join(f"{a}/{b} {c:.3f}" for a, b, c in twins[:8])
      )

  if config.model.student_checkpoint:
    loaded = clip_lib.load(config.model.student_checkpoint)
    student_cfg, student_params = loaded.config, jax.tree.map(np.asarray, loaded.params)
  else:
    student_cfg, student_params = teacher_cfg, jax.tree.map(np.copy, teacher_params)

  control = None
  if config.control_steps > 0 and config.data.source == "shapes_world":
    # the teacher trained further on image-text pairs only: the student's images, order, steps
    control = (
        teacher_cfg,
        clip_stage_cached(
            config,
            teacher_cfg,
            teacher_params,
            train_source,
            tokenize,
            os.path.join(workdir, "control"),
            config.control_steps,
            "control",
            batch_size=config.batch_size,
            seed_offset=0,
        ),
    )

  dtype = _dtype(config.model.dtype)
  student = clip_lib.CLIP(student_cfg, dtype=dtype, remat=config.model.remat)
  teacher = clip_lib.CLIP(teacher_cfg, dtype=dtype)
  o = config.optimizer
  sched = opt.warmup_multistep_schedule(
      o.lr, o.warmup_steps, o.warmup_factor, tuple(o.decay_steps), o.decay_factor
  )
  tx = opt.make_optimizer(
      o.name,
      sched,
      momentum=o.momentum,
      weight_decay=o.weight_decay,
      clip_norm=o.clip_norm,
      clip_type=o.clip_type,
  )
  mask = opt.trainable_mask(
      student_params, tuple(config.model.trainable), tuple(config.model.frozen)
  )
  p = config.proposals
  rpn_fn = None
  if p.kind == "rpn":
    from regionclip_jax.detection.run import pretrain_proposal_fn  # detection area

    teacher_path = config.model.teacher_checkpoint or os.path.join(workdir, "teacher", "final")
    rpn_fn = pretrain_proposal_fn(
        get_rpn(config, workdir, teacher_path),
        post_nms_topk=p.rpn_post_nms_topk,
        nms_thresh=p.rpn_nms_thresh,
        num_sampled=p.num,
    )
  proposal_fn = make_proposal_fn(
      p.kind,
      p.num,
      jitter_copies=p.jitter_copies,
      jitter_scale=p.jitter_scale,
      min_frac=p.min_frac,
      max_frac=p.max_frac,
      rpn_fn=rpn_fn,
  )
  L = config.loss
  temperature = L.temperature
  teacher_tau = clip_lib.learned_temperature(teacher_params)
  if L.temperature_from_teacher:
    temperature = teacher_tau
    _log(f"[pretrain] loss temperature = 1 / the teacher's learned logit scale = {temperature:.4f}")
  image_text_tau = teacher_tau if L.get("image_text_temperature_from_teacher", False) else 0.0
  if image_text_tau:
    _log(
        f"[pretrain] image-text temperature = 1 / the teacher's learned logit scale = {image_text_tau:.4f}"
    )
  loss_cfg = LossConfig(
      L.region_distill,
      L.region_contrastive,
      L.image_text,
      temperature,
      L.concept_threshold,
      L.group_size,
      image_text_tau,
  )
  step = make_pretrain_step(
      student,
      teacher,
      tx,
      mask,
      proposal_fn,
      loss_cfg,
      seed=config.seed,
      region_kw=_region_kw(config),
  )
  frozen = {
      "teacher_params": teacher_params,
      "concept_emb": jnp.asarray(concept_emb),
      "teacher_concept_emb": jnp.asarray(concept_emb),
  }
  state = create_train_state(student_params, tx, mask)
  fn, state, frozen = jit_step(
      step,
      MESH[0],
      state,
      mode=config.sharding.mode,
      min_size=config.sharding.fsdp_min_size,
      frozen=frozen,
  )
  data = _train_iterator(config, train_source, config.batch_size, tokenize)
  keys = ("image", "image_size", "caption_tokens", "boxes", "box_mask")
  state = train_loop(
      state=state,
      step_fn=lambda s, b: fn(s, b, frozen),
      data=data,
      num_steps=config.num_steps,
      workdir=workdir,
      put_batch=_put(keys),
      checkpoint_every=config.checkpoint_every,
      keep_checkpoints=config.keep_checkpoints,
      async_checkpoints=config.async_checkpoints,
      log_every=config.log_every,
      images_per_step=config.batch_size,
      name="regionclip",
  )
  student_params = _to_host(state.params)
  _save_clip(os.path.join(workdir, "student"), student_cfg, student_params, "regionclip_pretrain")

  results: dict = {
      "workdir": workdir,
      "preset": config.preset,
      "num_steps": config.num_steps,
      "near_identical_concepts": [list(t) for t in twins],
  }
  if config.eval.enabled and eval_source is not None:
    models = {"teacher": (teacher_cfg, teacher_params), "student": (student_cfg, student_params)}
    if control is not None:
      models["control"] = control
    acc = evaluate(
        config,
        models,
        eval_source,
        tokenize,
        concept_emb,
        eval_source.base_indices,
        eval_source.novel_indices,
    )
    results["zero_shot_region_top1"] = acc
    _log(format_region_table(acc, concept_emb.shape[0]))
    _figures(workdir, acc)
  results["wall_seconds"] = time.time() - t0
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(results, f, indent=2)
    _log(
        f"[pretrain] done in {results['wall_seconds']:.0f}s; metrics: {os.path.join(workdir, 'metrics.json')}"
    )
  return results
