"""What the pretraining stages share: config validation, workdir layout, host transfers, logging.

A stage finds its inputs through `teacher_path` / `rpn_path` (the config's checkpoint, else the
workdir's own), so the stages run in any order the caller gives them and never call each other
(docs/design.md, "Pretraining").
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from regionclip_jax.models import clip as clip_lib
from regionclip_jax.models.checkpoints import save_converted
from regionclip_jax.pretrain.clip_pretrain import BATCH_NORM_MODES
from regionclip_jax.train.sharding import global_batch

# Validation messages name the config file the user passed, not this module: the fix is there.
WHERE = "configs/pretrain.py"
PyTree = Any


def _check_choice(value, options, key: str) -> None:
  if value not in options:
    raise ValueError(f"{WHERE}: {key}={value!r} is not one of {list(options)}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raise on settings no stage can run with, before any of them spends time training."""
  _check_choice(
      config.data.source,
      ("shapes_world", "tsv", "coco_captions", "jsonl", "tfds", "array_record"),
      "data.source",
  )
  _check_choice(config.proposals.kind, ("boxes_jitter", "random", "rpn"), "proposals.kind")
  _check_choice(config.data.get("on_error", "skip"), ("strict", "skip"), "data.on_error")
  _check_choice(config.model.dtype, ("float32", "bfloat16"), "model.dtype")
  _check_choice(config.sharding.mode, ("replicate", "fsdp"), "sharding.mode")
  _check_choice(config.optimizer.clip_type, ("per_tensor", "global"), "optimizer.clip_type")
  _check_choice(config.teacher_stage.batch_norm, BATCH_NORM_MODES, "teacher_stage.batch_norm")
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


# -- workdir layout ----------------------------------------------------------------------------


def resolve_workdir(config, workdir: str | None) -> str:
  """The flag, else config.workdir, else <tmp>/regionclip_jax/pretrain_<preset>; created."""
  workdir = os.path.abspath(
      workdir
      or config.workdir
      or os.path.join(
          tempfile.gettempdir(), "regionclip_jax", f"pretrain_{config.preset or 'custom'}"
      )
  )
  os.makedirs(workdir, exist_ok=True)
  return workdir


def teacher_path(config, workdir: str) -> str:
  """model.teacher_checkpoint, else the teacher stage's <workdir>/teacher/final."""
  return config.model.teacher_checkpoint or os.path.join(workdir, "teacher", "final")


def rpn_path(config, workdir: str) -> str:
  """proposals.rpn_checkpoint, else the RPN stage's <workdir>/rpn."""
  return config.proposals.rpn_checkpoint or os.path.join(workdir, "rpn")


def student_path(workdir: str) -> str:
  return os.path.join(workdir, "student")


def control_path(workdir: str) -> str:
  return os.path.join(workdir, "control", "final")


def wants_control(config) -> bool:
  """Whether the job has a matched-compute control stage (control_steps > 0, shapes world)."""
  return config.control_steps > 0 and config.data.source == "shapes_world"


def has_clip(path: str) -> bool:
  """Whether a converted CLIP checkpoint was completed at `path` (config.json is written last)."""
  return os.path.exists(os.path.join(path, "config.json"))


def load_clip(path: str) -> tuple[clip_lib.CLIPConfig, PyTree]:
  """Any clip.load path -> (CLIPConfig, host numpy params)."""
  loaded = clip_lib.load(path)
  return loaded.config, jax.tree.map(np.asarray, loaded.params)


def save_clip(path: str, cfg, params, source: str) -> None:
  """Written by process 0; every process waits for it, since later stages read it back."""
  if jax.process_index() == 0:
    save_converted(path, cfg, params, source=source)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"saved {path}")


# -- small helpers -----------------------------------------------------------------------------


def compute_dtype(name: str):
  return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def region_kw(config) -> dict:
  """RoI pooling settings of the region encoder, the same in training and evaluation."""
  m = config.model
  return dict(
      pooler_resolution=m.pooler_resolution or None,
      roi_method=m.roi_method,
      chunk_size=m.roi_chunk_size,
  )


def batch_placer(keys, mesh):
  """-> fn(host batch) -> the `keys` present in it as global arrays sharded over `mesh`."""

  def put(batch):
    return global_batch({k: batch[k] for k in keys if k in batch}, mesh)

  return put


def to_host(tree):
  """Device (possibly multi-host sharded) arrays -> full numpy arrays on every process."""
  if jax.process_count() > 1:
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
  return jax.tree.map(np.asarray, jax.device_get(tree))


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)
