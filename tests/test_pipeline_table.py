"""The pipeline's table over seeds: means, spreads and the per-seed rows from synthetic results."""

import numpy as np
import pytest

from regionclip_jax import pipeline


def _seed(seed: int, student: float, teacher: float, ap_gap: float) -> dict:
  groups = ("all", "base", "novel")
  region = {
      "student": {g: student for g in groups} | {"n_all": 100},
      "teacher": {g: teacher for g in groups} | {"n_all": 100},
      "control": {g: teacher for g in groups} | {"n_all": 100},
      "student_minus_teacher": {g: student - teacher for g in groups}
      | {"se_" + g: 0.01 for g in groups},
      "student_minus_control": {g: student - teacher for g in groups}
      | {"se_" + g: 0.01 for g in groups},
  }
  for m in ("student", "teacher", "control"):
    region[m] |= {"se_" + g: 0.01 for g in groups}
  ap = lambda novel: {"AP50_novel": novel, "AP50_base": 50.0, "AP50_all": 40.0}
  det = {"student": ap(20.0 + ap_gap), "teacher": ap(20.0), "control": ap(19.0)}
  return {
      "seed": seed,
      "region": region,
      "detection": det,
      "detection_without_ensemble": {k: ap(v["AP50_novel"] - 1.0) for k, v in det.items()},
      "zero_shot_detection": {k: ap(v["AP50_novel"] + 1.0) for k, v in det.items()},
      "closest_concepts": [["star", "cross", 0.8 + 0.01 * seed], ["a", "b", 0.5]],
  }


def test_table_over_seeds_has_mean_std_per_seed_rows_and_closest_pairs():
  per_seed = [_seed(0, 0.60, 0.50, 4.0), _seed(7, 0.55, 0.52, -2.0)]
  summary = pipeline.summarize(per_seed)
  gaps = summary["region"]["student_minus_teacher"]["all"]
  assert gaps["values"] == pytest.approx([0.10, 0.03])
  assert gaps["mean"] == pytest.approx(0.065)
  assert gaps["std"] == pytest.approx(np.std([0.10, 0.03], ddof=1))
  table = pipeline.format_table(summary)
  assert "| student − teacher (paired) | +6.5 ± 4.9 |" in table
  assert "seed 0 star/cross 0.800; seed 7 star/cross 0.870" in table
  rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
  # per seed: student - teacher all / base / novel, student - control all / novel, then the
  # novel AP50 gaps with the ensemble, alone and zero-shot
  assert rows["0"] == "| 0 | +10.0 | +10.0 | +10.0 | +10.0 | +10.0 | +4.0 | +4.0 | +4.0 |"
  assert rows["7"] == "| 7 | +3.0 | +3.0 | +3.0 | +3.0 | +3.0 | -2.0 | -2.0 | -2.0 |"
  assert "novel AP50 student − teacher (alone)" in table
