"""The image-level CLIP stages (docs/design.md, "Pretraining"), both on the shapes world:

* teacher: both towers trained from scratch -> <workdir>/teacher/final, since no real CLIP exists
  offline (real data gives model.teacher_checkpoint instead);
* control: the teacher trained further on image-text pairs only, with the student's images,
  order and steps -> <workdir>/control/final, the matched-compute baseline of region recognition.

Each is skipped when its output exists and otherwise resumes from its own checkpoints.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.models import clip as clip_lib
from regionclip_jax.pretrain import sources
from regionclip_jax.pretrain.clip_pretrain import (
    BN_STATISTICS_REGEX,
    calibrate_frozen_bn,
    make_clip_step,
)
from regionclip_jax.pretrain.common import (
    WHERE,
    batch_placer,
    compute_dtype,
    control_path,
    has_clip,
    load_clip,
    log,
    save_clip,
    teacher_path,
    to_host,
    wants_control,
)
from regionclip_jax.pretrain.tokens import make_tokenize
from regionclip_jax.train import optimizer as opt
from regionclip_jax.train.loop import train_loop
from regionclip_jax.train.sharding import jit_step, make_mesh
from regionclip_jax.train.state import create_train_state

PyTree = Any


def train_clip(
    config,
    cfg: clip_lib.CLIPConfig,
    params: PyTree,
    source,
    tokenize,
    workdir: str,
    num_steps: int,
    name: str,
    mesh,
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
  model = clip_lib.CLIP(cfg, dtype=compute_dtype(config.model.dtype), remat=config.model.remat)
  sched = opt.warmup_multistep_schedule(ts.lr, ts.warmup_steps, 0.01, tuple(ts.decay_steps))
  tx = opt.make_optimizer("adamw", sched, weight_decay=ts.weight_decay, clip_norm=1.0)
  frozen = BN_STATISTICS_REGEX if ts.batch_norm == "train" else clip_lib.FROZEN_BN_REGEX
  mask = opt.trainable_mask(params, trainable=(".*",), frozen=(frozen,))
  state = create_train_state(params, tx, mask)
  fn, state, _ = jit_step(
      make_clip_step(model, tx, mask, batch_norm=ts.batch_norm),
      mesh,
      state,
      mode=config.sharding.mode,
      min_size=config.sharding.fsdp_min_size,
  )
  data = sources.train_iterator(config, source, batch_size, tokenize, seed_offset=seed_offset)
  state = train_loop(
      state=state,
      step_fn=lambda s, b: fn(s, b, None),
      data=data,
      num_steps=num_steps,
      workdir=workdir,
      put_batch=batch_placer(("image", "caption_tokens"), mesh),
      checkpoint_every=max(1, min(config.checkpoint_every, num_steps)),
      keep_checkpoints=config.keep_checkpoints,
      async_checkpoints=config.async_checkpoints,
      log_every=ts.log_every,
      images_per_step=batch_size,
      name=name,
  )
  params = to_host(state.params)
  if ts.batch_norm == "train":
    images = sources.calibration_images(config, source, ts.calibration_images)
    params = jax.tree.map(np.asarray, calibrate_frozen_bn(model, params, jnp.asarray(images)))
    log(f"[{name}] BN statistics re-estimated on {len(images)} training images")
  return params


def _train_and_save(config, cfg, params, workdir: str, num_steps: int, name: str, **kw) -> str:
  """train_clip on the shapes world into `workdir`, saved as a converted CLIP in <workdir>/final."""
  mesh = make_mesh(config.sharding.num_devices)
  tokenize = make_tokenize(config)
  params = train_clip(
      config,
      cfg,
      params,
      sources.shapes_train_source(config),
      tokenize,
      workdir,
      num_steps,
      name,
      mesh,
      **kw,
  )
  final = os.path.join(workdir, "final")
  save_clip(final, cfg, params, f"shapes_world_{name}_stage")
  return final


def train_teacher(config, workdir: str) -> str:
  """-> the teacher: model.teacher_checkpoint, or <workdir>/teacher/final, trained now when it
  does not exist (shapes world, teacher_stage.num_steps > 0)."""
  if config.model.teacher_checkpoint:
    return config.model.teacher_checkpoint
  final = teacher_path(config, workdir)
  if has_clip(final):
    log(f"[pretrain] teacher found at {final}")
    return final
  if config.data.source != "shapes_world" or config.teacher_stage.num_steps <= 0:
    raise ValueError(
        f"{WHERE}: no teacher: set model.teacher_checkpoint (a CLIP checkpoint), or use "
        f"data.source='shapes_world' with teacher_stage.num_steps > 0"
    )
  cfg = clip_lib.get_config(config.model.teacher)
  log(
      f"[pretrain] no teacher checkpoint: training an image-level CLIP teacher "
      f"({config.model.teacher}, {config.teacher_stage.num_steps} steps) into {final}"
  )
  params = jax.tree.map(np.asarray, clip_lib.init_params(cfg, seed=config.seed))
  return _train_and_save(
      config,
      cfg,
      params,
      os.path.join(workdir, "teacher"),
      config.teacher_stage.num_steps,
      "teacher",
  )


def train_control(config, workdir: str) -> str | None:
  """-> <workdir>/control/final (trained now when it does not exist) from the teacher, or None
  when control_steps is 0 or the data are not the shapes world."""
  if not wants_control(config):
    return None
  final = control_path(workdir)
  if has_clip(final):
    log(f"[control] found {final}")
    return final
  cfg, params = load_clip(teacher_path(config, workdir))
  # the student's batch size and seed offset: its images in its order, for as many steps
  return _train_and_save(
      config,
      cfg,
      params,
      os.path.dirname(final),
      config.control_steps,
      "control",
      batch_size=config.batch_size,
      seed_offset=0,
  )
