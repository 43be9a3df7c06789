"""The evaluate CLI: table + json output, one-line errors, empty detections."""

import json
import os
import subprocess
import sys

import pytest

from regionclip_jax.tools.evaluate import format_table, run
from test_eval_coco import make_dets, make_gt
from test_eval_lvis import make_lvis_gt
from test_eval_lvis import make_dets as make_lvis_dets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run(
      [sys.executable, "-m", "regionclip_jax.tools.evaluate", *args],
      capture_output=True,
      text=True,
      cwd=ROOT,
      env=env,
      timeout=120,
  )


@pytest.fixture
def files(tmp_path):
  gt, dets = make_gt(0), None
  dets = make_dets(gt, 10)
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "dets.json").write_text(json.dumps(dets))
  (tmp_path / "empty.json").write_text("[]")
  (tmp_path / "unknown.json").write_text(
      json.dumps([{"image_id": 1, "category_id": 4242, "bbox": [0, 0, 3, 3], "score": 0.5}])
  )
  return tmp_path


def test_cli_writes_metrics_and_table(files):
  out = files / "m" / "metrics.json"
  r = cli(
      f"--annotations={files / 'gt.json'}",
      f"--detections={files / 'dets.json'}",
      "--split=coco_ovd",
      f"--output={out}",
  )
  assert r.returncode == 0, r.stderr
  metrics = json.loads(out.read_text())  # strict json: NaN written as null
  assert metrics["per_category"]["cake"]["AP50"] is None
  direct = run(str(files / "gt.json"), str(files / "dets.json"), "coco_ovd")
  assert metrics["AP50_novel"] == pytest.approx(direct["AP50_novel"])
  assert f"| AP50_novel | {direct['AP50_novel']:.2f} |" in r.stdout


def test_cli_errors_are_one_line(files):
  r = cli(f"--annotations={files / 'nope.json'}", f"--detections={files / 'dets.json'}")
  assert r.returncode == 2 and "nope.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1
  r = cli(
      f"--annotations={files / 'gt.json'}", f"--detections={files / 'unknown.json'}", "--split=coco"
  )
  assert r.returncode == 2 and "unknown category_id 4242" in r.stderr


def test_run_empty_detections_and_lvis(files, tmp_path):
  m = run(str(files / "gt.json"), str(files / "empty.json"), "coco_ovd")
  assert m["AP50_novel"] == 0.0 and "no detections" in format_table(m)
  gt = make_lvis_gt(0)
  (tmp_path / "lvis.json").write_text(json.dumps(gt))
  (tmp_path / "lvis_dets.json").write_text(json.dumps(make_lvis_dets(gt, 1)))
  m = run(str(tmp_path / "lvis.json"), str(tmp_path / "lvis_dets.json"), "lvis")
  table = format_table(m)
  assert "| APr |" in table and "| AR@300 |" in table and m["APr"] > 0
  with pytest.raises(ValueError, match="valid splits"):
    run(str(files / "gt.json"), str(files / "dets.json"), "voc")
