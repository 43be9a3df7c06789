"""The RegionCLIP stage (docs/design.md, "Pretraining"): the student visual encoder, initialised
from the teacher, learns region-concept alignment from the frozen teacher's pseudo labels on the
proposals of a frozen RPN -> <workdir>/student (converted CLIP format).

Inputs: the teacher at model.teacher_checkpoint or <workdir>/teacher/final; with proposals.kind
"rpn", the RPN at proposals.rpn_checkpoint or <workdir>/rpn. Training resumes from
<workdir>/checkpoints.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.models import clip as clip_lib
from regionclip_jax.pretrain import sources
from regionclip_jax.pretrain.common import (
    batch_placer,
    compute_dtype,
    load_clip,
    log,
    region_kw,
    rpn_path,
    save_clip,
    student_path,
    teacher_path,
    to_host,
)
from regionclip_jax.pretrain.concept_pool import concept_pool, near_identical
from regionclip_jax.pretrain.proposals import make_proposal_fn, rpn_proposal_fn
from regionclip_jax.pretrain.step import LossConfig, make_pretrain_step
from regionclip_jax.pretrain.tokens import make_tokenize
from regionclip_jax.train import optimizer as opt
from regionclip_jax.train.loop import train_loop
from regionclip_jax.train.sharding import jit_step, make_mesh
from regionclip_jax.train.state import create_train_state

PyTree = Any
BATCH_KEYS = ("image", "image_size", "caption_tokens", "boxes", "box_mask")


def _optimizer(config, params):
  """-> (optax transform, trainable mask) of `optimizer` over the `model.trainable` params."""
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
  mask = opt.trainable_mask(params, tuple(config.model.trainable), tuple(config.model.frozen))
  return tx, mask


def _proposal_fn(config, workdir: str):
  p = config.proposals
  rpn_fn = None
  if p.kind == "rpn":
    path = rpn_path(config, workdir)
    if not os.path.isdir(path):
      raise FileNotFoundError(
          f"{__name__}: proposals.kind='rpn' but there is no RPN at {path}: train it first "
          "(the detection task's stage 'rpn') or set proposals.rpn_checkpoint"
      )
    rpn_fn = rpn_proposal_fn(
        path, post_nms_topk=p.rpn_post_nms_topk, nms_thresh=p.rpn_nms_thresh, num_sampled=p.num
    )
  return make_proposal_fn(
      p.kind,
      p.num,
      jitter_copies=p.jitter_copies,
      jitter_scale=p.jitter_scale,
      min_frac=p.min_frac,
      max_frac=p.max_frac,
      rpn_fn=rpn_fn,
  )


def _loss_config(config, teacher_params) -> LossConfig:
  """`loss`, with the temperatures taken from the teacher's learned logit scale where asked."""
  L = config.loss
  temperature = L.temperature
  teacher_tau = clip_lib.learned_temperature(teacher_params)
  if L.temperature_from_teacher:
    temperature = teacher_tau
    log(f"[pretrain] loss temperature = 1 / the teacher's learned logit scale = {temperature:.4f}")
  image_text_tau = teacher_tau if L.get("image_text_temperature_from_teacher", False) else 0.0
  if image_text_tau:
    log(
        "[pretrain] image-text temperature = 1 / the teacher's learned logit scale = "
        f"{image_text_tau:.4f}"
    )
  return LossConfig(
      L.region_distill,
      L.region_contrastive,
      L.image_text,
      temperature,
      L.concept_threshold,
      L.group_size,
      image_text_tau,
  )


def _initial_student(config, teacher_cfg, teacher_params):
  if config.model.student_checkpoint:
    return load_clip(config.model.student_checkpoint)
  return teacher_cfg, jax.tree.map(np.copy, teacher_params)


def run(config, workdir: str) -> dict:
  """Train (or resume) the student into <workdir>/student.

  -> {"student": its path, "num_concepts": C, "near_identical_concepts": [(a, b, cosine)],
  "closest_concepts": the 3 closest pairs of the teacher's concept pool}.
  """
  mesh = make_mesh(config.sharding.num_devices)
  tokenize = make_tokenize(config)
  train_source, names = sources.train_source(config)
  teacher_cfg, teacher_params = load_clip(teacher_path(config, workdir))
  concept_emb = concept_pool(config, teacher_cfg, teacher_params, tokenize, names)
  log(f"[pretrain] concept pool: {concept_emb.shape[0]} concepts x {concept_emb.shape[1]}")
  twins = near_identical(concept_emb, names)
  if twins:
    log(
        f"[pretrain] warning: {len(twins)} concept pair(s) have near-identical text embeddings "
        f"(cosine >= 0.95), so no image model can tell them apart with this text tower: "
        + ", ".join(f"{a}/{b} {c:.3f}" for a, b, c in twins[:8])
    )
  student_cfg, student_params = _initial_student(config, teacher_cfg, teacher_params)

  dtype = compute_dtype(config.model.dtype)
  student = clip_lib.CLIP(student_cfg, dtype=dtype, remat=config.model.remat)
  teacher = clip_lib.CLIP(teacher_cfg, dtype=dtype)
  tx, mask = _optimizer(config, student_params)
  step = make_pretrain_step(
      student,
      teacher,
      tx,
      mask,
      _proposal_fn(config, workdir),
      _loss_config(config, teacher_params),
      seed=config.seed,
      region_kw=region_kw(config),
  )
  frozen = {
      "teacher_params": teacher_params,
      "concept_emb": jnp.asarray(concept_emb),
      "teacher_concept_emb": jnp.asarray(concept_emb),
  }
  state = create_train_state(student_params, tx, mask)
  fn, state, frozen = jit_step(
      step,
      mesh,
      state,
      mode=config.sharding.mode,
      min_size=config.sharding.fsdp_min_size,
      frozen=frozen,
  )
  state = train_loop(
      state=state,
      step_fn=lambda s, b: fn(s, b, frozen),
      data=sources.train_iterator(config, train_source, config.batch_size, tokenize),
      num_steps=config.num_steps,
      workdir=workdir,
      put_batch=batch_placer(BATCH_KEYS, mesh),
      checkpoint_every=config.checkpoint_every,
      keep_checkpoints=config.keep_checkpoints,
      async_checkpoints=config.async_checkpoints,
      log_every=config.log_every,
      images_per_step=config.batch_size,
      name="regionclip",
  )
  path = student_path(workdir)
  save_clip(path, student_cfg, to_host(state.params), "regionclip_pretrain")
  return {
      "student": path,
      "num_concepts": int(concept_emb.shape[0]),
      "near_identical_concepts": [list(t) for t in twins],
      # twins is sorted closest first: the pool's cosines are computed again only when it holds
      # fewer than 3 pairs
      "closest_concepts": [
          list(t)
          for t in (twins[:3] if len(twins) >= 3 else near_identical(concept_emb, names, -1.0, 3))
      ],
  }
