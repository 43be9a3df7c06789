"""The order of the pretraining stages (docs/design.md, "Pretraining"), behind main's task
"pretrain" (`python -m regionclip_jax.main --config=configs/pretrain.py`) and the shapes-world
pipeline:

  1. teacher   pretrain.clip_stage.train_teacher  -> <workdir>/teacher/final
               (shapes world; real data give model.teacher_checkpoint)
  2. RPN       detection.finetune.train_rpn       -> <workdir>/rpn, class-agnostic on base boxes,
               backbone from the teacher (only for proposals.kind "rpn" without rpn_checkpoint)
  3. student   pretrain.regionclip_stage.run      -> <workdir>/student
  4. control   pretrain.clip_stage.train_control  -> <workdir>/control/final (control_steps > 0)
  5. zero-shot region recognition (teacher vs. student [vs. control], GT boxes, held-out scenes)
               pretrain.region_eval.run           -> <workdir>/metrics.json and figures

Each stage reads its inputs from the config and the workdir, none calls another, and each is
skipped (teacher, RPN, control) or resumed (student) when its output exists, so a rerun resumes.
"""

from __future__ import annotations

import json
import os
import time

import jax

from regionclip_jax import files
from regionclip_jax.detection import finetune
from regionclip_jax.pretrain import clip_stage, region_eval, regionclip_stage
from regionclip_jax.pretrain.common import log, resolve_workdir, validate
from regionclip_jax.train.compile_cache import compilation_cache


def teacher(config, workdir: str) -> str:
  """Stage 1 -> the teacher's path (model.teacher_checkpoint or <workdir>/teacher/final)."""
  return clip_stage.train_teacher(config, workdir)


def rpn(config, teacher_path: str, rpn_dir: str) -> str:
  """Stage 2: the frozen proposal RPN into `rpn_dir` (skipped when its export exists), trained
  with the `rpn_stage` config (configs/finetune.py:rpn_shapes), its backbone initialised from
  `teacher_path` (any clip.load path)."""
  if finetune.rpn_trained(rpn_dir):
    log(f"[pretrain] RPN found at {rpn_dir}")
    return rpn_dir
  rc = config.rpn_stage.copy_and_resolve_references()
  rc.seed = config.seed
  rc.rpn.init_checkpoint = teacher_path
  log(
      f"[pretrain] no RPN checkpoint: training a class-agnostic RPN on base boxes "
      f"({rc.train.num_steps} steps, backbone from the teacher) into {rpn_dir}"
  )
  finetune.train_rpn(rc, rpn_dir)
  return rpn_dir


def regionclip(config, workdir: str, t0: float | None = None) -> dict:
  """Stages 3-5 (the teacher and, for proposals.kind "rpn", the RPN must exist) -> the results,
  also written to <workdir>/metrics.json. `t0`: when the job started, for wall_seconds."""
  t0 = time.time() if t0 is None else t0
  validate(config)
  workdir = resolve_workdir(config, workdir)
  student = regionclip_stage.run(config, workdir)
  clip_stage.train_control(config, workdir)
  acc = region_eval.run(config, workdir)
  results: dict = {
      "workdir": workdir,
      "preset": config.preset,
      "num_steps": config.num_steps,
      "near_identical_concepts": student["near_identical_concepts"],
      "closest_concepts": student["closest_concepts"],
  }
  if acc is not None:
    results["zero_shot_region_top1"] = acc
  results["wall_seconds"] = time.time() - t0
  if jax.process_index() == 0:
    path = os.path.join(workdir, "metrics.json")
    with files.atomic_open(path) as f:
      json.dump(results, f, indent=2)
    log(f"[pretrain] done in {results['wall_seconds']:.0f}s; metrics: {path}")
  return results


def run(config, workdir: str | None = None) -> dict:
  """The whole pretraining job, stages 1-5, into `workdir` (or config.workdir, or a temp dir)."""
  validate(config)
  workdir = resolve_workdir(config, workdir)
  log(f"[pretrain] workdir: {workdir}")
  with compilation_cache(os.path.join(workdir, "xla_cache")):
    return _run(config, workdir)


def _run(config, workdir: str) -> dict:
  t0 = time.time()
  teacher_path = teacher(config, workdir)
  p = config.proposals
  if p.kind == "rpn" and not p.rpn_checkpoint:
    rpn(config, teacher_path, os.path.join(workdir, "rpn"))
  return regionclip(config, workdir, t0)
