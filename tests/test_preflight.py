"""Early failure: an unwritable workdir, a disk too full for the first checkpoint and a config
asking for more devices than exist each end the run before its first step, in one line."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from regionclip_jax.train import preflight
from regionclip_jax.train.loop import train_loop
from regionclip_jax.train.sharding import make_mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=300):
  return subprocess.run(
      [sys.executable, "-m", "regionclip_jax.main", *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def _error_line(proc) -> str:
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert len(lines) == 1, proc.stderr[-2000:]
  return lines[0]


def test_unwritable_workdir_is_one_line_before_anything_runs(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  proc = _main("--config=configs/pretrain.py", f"--workdir={blocker}/run")
  assert proc.returncode == 2
  line = _error_line(proc)
  assert line.startswith("error: workdir ") and f"{blocker}/run" in line and "not writable" in line


def test_more_devices_than_exist_is_one_line_before_training(tmp_path):
  proc = _main(
      "--config=configs/pretrain.py",
      f"--workdir={tmp_path}/run",
      "--config.sharding.num_devices=64",
      "--config.data.num_train_scenes=64",
      "--config.teacher_stage.calibration_images=16",
  )
  assert proc.returncode == 2
  line = _error_line(proc)
  assert "sharding.num_devices=64" in line and "device(s)" in line
  assert not os.path.exists(tmp_path / "run" / "teacher" / "checkpoints")  # no step was taken


def test_make_mesh_names_the_key():
  with pytest.raises(preflight.PreflightError, match=r"train\.num_devices=5 but this job has 1"):
    make_mesh(5, "train.num_devices")
  assert make_mesh(0).devices.size == 1


def test_full_disk_fails_before_the_first_step(tmp_path, monkeypatch):
  state = {"w": jnp.zeros((1024, 1024), jnp.float32), "step": jnp.zeros((), jnp.int32)}
  assert preflight.state_bytes(state) == 4 * 2**20 + 4
  usage = preflight.shutil.disk_usage(tmp_path)
  monkeypatch.setattr(
      preflight.shutil,
      "disk_usage",
      lambda path: usage._replace(free=10 * 2**20),  # 10 MiB free, 2 x 4 MiB + margin needed
  )
  steps = []

  def step_fn(s, batch):
    steps.append(batch)
    return s, {"loss": jnp.float32(0)}

  with pytest.raises(preflight.PreflightError, match=r"10 MiB free on its disk.*~24 MiB"):
    train_loop(
        state=state,
        step_fn=step_fn,
        data=iter([np.zeros(1)] * 4),
        num_steps=4,
        workdir=str(tmp_path),
    )
  assert steps == [] and not os.path.exists(tmp_path / "checkpoints")


def test_check_writable_accepts_a_new_directory(tmp_path):
  preflight.check_writable(str(tmp_path / "new" / "dir"))
  assert os.listdir(tmp_path / "new" / "dir") == []  # the probe file is gone


@pytest.mark.parametrize(
    "flag",
    ["--workdir=gs://bucket/run", "--config.model.teacher_checkpoint=s3://bucket/teacher"],
)
def test_url_paths_are_refused_in_one_line_naming_the_setting(tmp_path, flag):
  args = ["--config=configs/pretrain.py", flag]
  if "workdir" not in flag:
    args.append(f"--workdir={tmp_path}/run")
  proc = _main(*args)
  assert proc.returncode == 2
  line = _error_line(proc)
  assert flag.split("=")[0].lstrip("-") in line and "not supported" in line, line
  assert not os.path.exists(os.path.join(REPO, "gs:")), "a local ./gs: folder was created"
  assert not (tmp_path / "run").exists()
