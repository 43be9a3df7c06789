"""`configs/pipeline.py:smoke`: every stage of the shapes-world pipeline runs for a few steps
through the real entry point, writes its outputs, and the table holds finite, in-range numbers;
a second invocation resumes without redoing any stage."""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(workdir):
  return subprocess.run(
      [
          sys.executable,
          "-m",
          "regionclip_jax.main",
          "--config=configs/pipeline.py:smoke",
          f"--workdir={workdir}",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=900,
  )


def test_smoke_pipeline_runs_every_stage(tmp_path):
  res = _run(tmp_path)
  assert res.returncode == 0, res.stderr[-3000:]
  seed = tmp_path / "seed_0"
  for path in (
      "pretrain/teacher/final/config.json",
      "rpn/export",
      "pretrain/student/config.json",
      "pretrain/control/final/config.json",
      "pretrain/metrics.json",
      "finetune_student/metrics.json",
      "finetune_teacher/metrics.json",
      "finetune_control/metrics.json",
      "finetune_student/examples.png",
  ):
    assert (seed / path).exists(), path
  for fig in (
      "region_recognition.png",
      "loss_regionclip.png",
      "loss_teacher.png",
      "detections_student.png",
      "table.md",
      "metrics.json",
  ):
    assert (tmp_path / fig).exists(), fig
  m = json.load(open(tmp_path / "metrics.json"))
  region = m["per_seed"][0]["region"]
  for model in ("teacher", "student", "control"):
    for g in ("all", "base", "novel"):
      assert 0.0 <= region[model][g] <= 1.0
  for other in ("teacher", "control"):
    d = region[f"student_minus_{other}"]["all"]
    assert math.isfinite(d) and -1.0 <= d <= 1.0
  for init in ("student", "teacher", "control"):
    for k in ("AP50_novel", "AP50_base", "AP50_all"):
      v = m["per_seed"][0]["detection"][init][k]
      assert math.isfinite(v) and 0.0 <= v <= 100.0  # percent
    v = m["per_seed"][0]["zero_shot_detection"][init]["AP50_novel"]
    assert math.isfinite(v) and 0.0 <= v <= 100.0
    # the shapes preset scores with the score ensemble and keeps the detector alone beside it
    v = m["per_seed"][0]["detection_without_ensemble"][init]["AP50_novel"]
    assert math.isfinite(v) and 0.0 <= v <= 100.0
    assert (seed / f"finetune_{init}/export/pretrained_variables.msgpack").exists()
    assert (seed / f"zero_shot_detection_{init}.json").exists()
  closest = m["per_seed"][0]["closest_concepts"]  # the teacher's 3 closest concept pairs
  cosines = [c for _, _, c in closest]
  assert len(closest) == 3 and cosines == sorted(cosines, reverse=True)
  assert all(-1.0 <= c <= 1.0 + 1e-6 for c in cosines)
  assert "The teacher's closest concept pair" in res.stdout
  assert set(m["per_seed"][0]["seconds"]) >= {
      "teacher",
      "rpn",
      "pretrain_and_control",
      "finetune_student",
      "finetune_teacher",
      "finetune_control",
      "zero_shot_detection",
  }
  assert "Zero-shot detection AP50" in res.stdout and "without the score ensemble" in res.stdout
  assert "without_ensemble_novel_ap50_student_minus_teacher_points" in m["targets"]
  assert "| student − teacher (paired) |" in res.stdout and "Claim b" in res.stdout
  # the stages shared JAX's persistent compilation cache, and it was switched off afterwards
  assert any((tmp_path / "xla_cache").iterdir())

  again = _run(tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "teacher found at" in again.stdout and "[control] found" in again.stdout
  assert "[rpn] starting" not in again.stdout and "[finetune] starting" not in again.stdout
