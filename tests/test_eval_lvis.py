"""LVIS metrics vs. direct `lvis` package calls, incl. a per-category path for APr / APc / APf."""

import contextlib
import copy
import io
import json
import logging

import numpy as np
import pytest
from lvis import LVIS, LVISEval, LVISResults

from regionclip_jax.evaluation.lvis_eval import evaluate_lvis, numpy_float_alias

FREQ = {1: "r", 2: "r", 3: "c", 4: "c", 5: "f", 6: "f", 7: "r"}  # 7: rare, never annotated


def make_lvis_gt(seed=0, num_images=6):
  rng = np.random.default_rng(seed)
  images, anns = [], []
  for i in range(1, num_images + 1):
    present = set()
    for _ in range(rng.integers(2, 5)):
      w, h = rng.uniform(10, 70, size=2)
      c = int(rng.integers(1, 7))
      present.add(c)
      anns.append(
          {
              "id": len(anns) + 1,
              "image_id": i,
              "category_id": c,
              "bbox": [rng.uniform(0, 150 - w), rng.uniform(0, 120 - h), w, h],
              "area": w * h,
          }
      )
    absent = [c for c in FREQ if c not in present]
    images.append(
        {
            "id": i,
            "width": 150,
            "height": 120,
            "neg_category_ids": absent[: len(absent) // 2 + 1],
            "not_exhaustive_category_ids": [sorted(present)[0]] if i % 2 else [],
        }
    )
  cats = [{"id": c, "name": f"thing_{c}", "frequency": f} for c, f in FREQ.items()]
  return {"images": images, "annotations": anns, "categories": cats}


def make_dets(gt, seed=1):
  rng = np.random.default_rng(seed)
  dets = []
  for a in gt["annotations"]:
    if rng.random() < 0.2:
      continue
    x, y, w, h = a["bbox"]
    j = rng.normal(0, 0.1, size=4) * [w, h, w, h]
    dets.append(
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [x + j[0], y + j[1], w + j[2], h + j[3]],
            "score": float(rng.uniform(0.1, 1)),
        }
    )
  for im in gt["images"]:
    for _ in range(5):
      dets.append(
          {
              "image_id": im["id"],
              "category_id": int(rng.integers(1, 8)),
              "bbox": [rng.uniform(0, 100), rng.uniform(0, 80), 30.0, 25.0],
              "score": float(rng.uniform(0, 0.9)),
          }
      )
  return dets


def direct_lvis(gt_path, dets, cat_ids=None):
  with contextlib.redirect_stdout(io.StringIO()), numpy_float_alias():  # lvis vs numpy 2 only
    gt = LVIS(str(gt_path))
    ev = LVISEval(gt, LVISResults(gt, copy.deepcopy(dets), max_dets=300), iou_type="bbox")
    if cat_ids is not None:
      ev.params.cat_ids = cat_ids
    ev.run()
  return ev.get_results()


@pytest.fixture(autouse=True)
def _quiet_lvis():
  logging.getLogger("lvis").setLevel(logging.WARNING)


def test_lvis_metrics_match_direct_calls(tmp_path):
  gt = make_lvis_gt(0)
  dets = make_dets(gt, 1)
  path = tmp_path / "lvis_gt.json"
  path.write_text(json.dumps(gt))
  m = evaluate_lvis(path, dets)
  ref = direct_lvis(path, dets)
  for k in ("AP", "AP50", "APr", "APc", "APf", "AR@300"):
    assert m[k] == pytest.approx(100 * ref[k], abs=1e-9), k
  # Independent aggregation: APr = mean over annotated rare categories of each one's own AP.
  per_cat = {c: direct_lvis(path, dets, cat_ids=[c])["AP"] for c in (1, 2, 3, 4, 5, 6)}
  for group, cs in (("APr", (1, 2)), ("APc", (3, 4)), ("APf", (5, 6))):
    vals = [per_cat[c] for c in cs if per_cat[c] > -1]
    assert m[group] == pytest.approx(100 * np.mean(vals), abs=1e-9), group
  assert 5 < m["AP"] < 95
  assert m["num_categories"] == {"r": 3, "c": 2, "f": 2, "base": 4, "novel": 3}
  assert "float" not in np.__dict__  # the numpy-2 shim for lvis is undone afterwards


def test_lvis_federated_rules_pass_through():
  gt = make_lvis_gt(2)
  dets = make_dets(gt, 3)
  base = evaluate_lvis(gt, dets)
  # A confident box of a category the image neither has nor lists as negative is ignored.
  im = gt["images"][0]
  present = {a["category_id"] for a in gt["annotations"] if a["image_id"] == im["id"]}
  unverified = [c for c in FREQ if c not in present and c not in im["neg_category_ids"]]
  assert unverified
  extra = dets + [
      {"image_id": im["id"], "category_id": unverified[0], "bbox": [1, 1, 20, 20], "score": 0.99}
  ]
  assert evaluate_lvis(gt, extra)["AP"] == pytest.approx(base["AP"])
  # The same box on a verified-negative category is a false positive.
  neg = im["neg_category_ids"][0]
  extra[-1] = dict(extra[-1], category_id=neg)
  assert evaluate_lvis(gt, extra)["AP"] < base["AP"]


def test_lvis_errors_and_empty():
  gt = make_lvis_gt(0)
  m = evaluate_lvis(gt, [])
  assert m["APr"] == 0.0 and "no detections" in m["note"]
  bad = copy.deepcopy(gt)
  del bad["images"][0]["neg_category_ids"]
  with pytest.raises(ValueError, match="neg_category_ids"):
    evaluate_lvis(bad, [])
  bad = copy.deepcopy(gt)
  del bad["categories"][0]["frequency"]
  with pytest.raises(ValueError, match="frequency"):
    evaluate_lvis(bad, [])
  with pytest.raises(ValueError, match="unknown category_id 42"):
    evaluate_lvis(gt, [{"image_id": 1, "category_id": 42, "bbox": [0, 0, 4, 4], "score": 1.0}])
