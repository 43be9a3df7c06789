"""The whole shapes-world experiment in one command (docs/design.md, "Shapes world"): teacher
CLIP -> base-class RPN -> RegionCLIP pretraining (+ matched-compute control) -> open-vocabulary
fine-tuning from the student, teacher and control -> region recognition and AP50 tables
(regionclip_jax/pipeline.py).

    python -m regionclip_jax.main --config=configs/pipeline.py                 # one seed
    python -m regionclip_jax.main --config=configs/pipeline.py:three_seeds     # the README table
    python -m regionclip_jax.main --config=configs/pipeline.py:smoke           # CI: every stage, tiny

Sub-configs are the stage presets themselves: `pretrain` = configs/pretrain.py:shapes (with its
`rpn_stage` = configs/finetune.py:rpn_shapes), `finetune` = configs/finetune.py:shapes; override
any key, e.g. --config.pretrain.num_steps=600 --config.finetune.train.num_steps=500.
"""

from __future__ import annotations

import ml_collections

from configs import finetune as finetune_configs, pretrain as pretrain_configs
from configs.common import select_preset


def shapes() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "pipeline"
  c.preset = ""
  c.workdir = ""
  c.seeds = (0,)
  c.inits = ("student", "teacher", "control")  # detector inits compared after fine-tuning
  c.pretrain = pretrain_configs.shapes()
  # pretrain.proposals.kind = "rpn" (official): the base-class RPN, trained by the pipeline's
  # stage 2 with pretrain.rpn_stage (= configs/finetune.py:rpn_shapes)
  c.pretrain.control_steps = c.pretrain.num_steps  # matched compute: same images and steps
  c.pretrain.data.num_eval_scenes = 1200  # ~3,000 GT regions: se <= 1 point
  # a teacher twice as long as the main command's: at 1,500 steps its text tower still gives
  # near-identical embeddings to 14 concept pairs (circle / square / heart, triangle / star / ...),
  # capping region top-1 at ~40% (docs/findings.md, "Concept twins in the text tower")
  c.pretrain.teacher_stage.num_steps = 3000
  c.finetune = finetune_configs.shapes()
  c.finetune.data.num_test = 512
  # classifier temperature 1 / the teacher's learned logit scale (~0.13) for every init, the
  # miniature's counterpart of the official 0.01 = 1 / OpenAI CLIP's scale: at 0.01 fine-tuning
  # collapses some inits onto one novel class (seed 0: teacher init base AP50 1.1; docs/findings.md,
  # "Classifier temperature")
  c.temperature_from_teacher = True
  # half the preset's fine-tuning, to keep one seed within 30 minutes with the longer teacher
  c.finetune.train.num_steps = 500
  c.finetune.optimizer.decay_steps = (400,)
  return c


def three_seeds() -> ml_collections.ConfigDict:
  """The table in the README: seeds 0, 1, 2 (about 3x the single-seed time)."""
  c = shapes()
  c.seeds = (0, 1, 2)
  return c


def smoke() -> ml_collections.ConfigDict:
  """Every stage for a few steps (CI integration test, ~2 minutes on 2 cores): numbers mean nothing."""
  c = shapes()
  p = c.pretrain
  p.num_steps = 4
  p.batch_size = 6
  p.log_every = 2
  p.checkpoint_every = 4
  p.control_steps = 4
  p.teacher_stage.num_steps = 6
  p.teacher_stage.batch_size = 8
  p.teacher_stage.warmup_steps = 2
  p.teacher_stage.log_every = 2
  p.teacher_stage.calibration_images = 16
  p.data.num_train_scenes = 64
  p.data.num_eval_scenes = 16
  p.optimizer.warmup_steps = 2
  p.optimizer.decay_steps = ()
  p.eval.batch_size = 16
  for ft in (p.rpn_stage, c.finetune):
    ft.train.num_steps = 4
    ft.train.batch_size = 4
    ft.train.log_every = 2
    ft.train.checkpoint_every = 4
    ft.optimizer.warmup_steps = 2
    ft.optimizer.decay_steps = ()
    ft.data.num_train = 32
    ft.data.num_test = 16
    ft.test.batch_size = 16
  c.finetune.test.num_examples = 2
  return c


PRESETS = {"shapes": shapes, "three_seeds": three_seeds, "smoke": smoke}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return select_preset(arg, PRESETS, "shapes", "configs/pipeline.py")
