"""configs/pretrain.py presets and typo handling; `python -m regionclip_jax.main` end to end."""

import json
import os
import subprocess
import sys

import pytest

from configs import pretrain as pretrain_config
from regionclip_jax.pretrain.common import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_presets_carry_official_hyperparameters():
  c = pretrain_config.get_config("rn50_cc3m")
  assert (c.batch_size, c.num_steps, tuple(c.optimizer.decay_steps)) == (
      96,
      600_000,
      (300_000, 525_000),
  )
  o = c.optimizer
  assert (o.name, o.lr, o.momentum, o.weight_decay, o.warmup_steps, o.warmup_factor) == (
      "sgd",
      0.002,
      0.9,
      1e-4,
      1000,
      0.001,
  )
  assert (o.clip_norm, o.clip_type) == (5.0, "per_tensor")
  L = c.loss
  assert (L.temperature, L.concept_threshold, L.group_size) == (0.01, 0.1, 3)
  assert (L.region_distill, L.region_contrastive, L.image_text) == (1.0, 1.0, 1.0)
  assert c.proposals.num == 100 and c.data.short_edge_lengths == (640, 672, 704, 736, 768, 800)
  assert pretrain_config.get_config("rn50x4_cc3m").model.student == "RN50x4"
  assert pretrain_config.get_config("rn50_coco").data.source == "coco_captions"
  d = pretrain_config.get_config()
  assert d.preset == "shapes" and d.model.student == "tiny_rn" and d.data.source == "shapes_world"


def test_typos_fail_listing_valid_names():
  with pytest.raises(ValueError, match=r"did you mean 'rn50_cc3m'.*valid presets"):
    pretrain_config.get_config("rn50_cc3mm")
  c = pretrain_config.get_config()
  with pytest.raises(AttributeError, match="group_size"):
    c.loss.group_sise = 2  # locked: unknown key, the message lists the existing ones


def test_validate_names_bad_choices():
  c = pretrain_config.get_config()
  with c.unlocked():
    c.proposals.kind = "rpnn"
  with pytest.raises(ValueError, match=r"proposals.kind='rpnn' is not one of"):
    validate(c)
  with pytest.raises(ValueError, match="needs proposals.rpn_checkpoint"):
    validate(pretrain_config.get_config("rn50_cc3m"))
  c = pretrain_config.get_config()
  c.batch_size = 25
  with pytest.raises(ValueError, match="multiple of loss.group_size"):
    validate(c)


def _main(*args, timeout=900):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "regionclip_jax.main", *args],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def test_cli_override_typo_fails_with_valid_keys():
  res = _main("--config=configs/pretrain.py", "--config.loss.group_sise=2")
  assert res.returncode != 0
  assert "group_sise" in res.stderr and "group_size" in res.stderr


@pytest.mark.slow
def test_default_job_end_to_end_small(tmp_path):
  res = _main(
      "--config=configs/pretrain.py",
      f"--workdir={tmp_path}",
      "--config.num_steps=4",
      "--config.teacher_stage.num_steps=4",
      "--config.data.num_train_scenes=128",
      "--config.data.num_eval_scenes=64",
      "--config.eval.batch_size=32",
      "--config.log_every=2",
      "--config.teacher_stage.log_every=2",
      "--config.checkpoint_every=2",
      "--config.rpn_stage.train.num_steps=4",
      "--config.rpn_stage.train.batch_size=4",
      "--config.rpn_stage.data.num_train=32",
  )
  assert res.returncode == 0, res.stderr[-3000:]
  out = res.stdout
  assert f"workdir: {tmp_path}" in out
  assert "[regionclip] step 4/4 | loss" in out and "region_distill" in out and "img/s" in out
  m = json.load(open(tmp_path / "metrics.json"))
  for who in ("teacher", "student"):
    for k in ("all", "base", "novel"):
      assert 0.0 <= m["zero_shot_region_top1"][who][k] <= 1.0
  assert (tmp_path / "student" / "config.json").exists()
  assert (tmp_path / "teacher" / "final" / "params.safetensors").exists()
  assert (tmp_path / "rpn" / "export").is_dir()  # the proposal RPN, trained on the fly
  assert any(p.startswith("events.out.tfevents") for p in os.listdir(tmp_path / "tensorboard"))
  assert any((tmp_path / "xla_cache").iterdir())  # JAX's persistent cache, for a rerun / resume
  # a second invocation resumes: the teacher is reused and the finished run is not redone
  again = _main(
      "--config=configs/pretrain.py",
      f"--workdir={tmp_path}",
      "--config.num_steps=4",
      "--config.teacher_stage.num_steps=4",
      "--config.data.num_train_scenes=128",
      "--config.data.num_eval_scenes=64",
      "--config.eval.batch_size=32",
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert "teacher found at" in again.stdout and "resumed at step 4 of 4" in again.stdout
  assert "RPN found at" in again.stdout
