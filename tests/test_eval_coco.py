"""COCO / OVD split metrics vs. direct per-category pycocotools calls (an independent path)."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from regionclip_jax.data import categories as C
from regionclip_jax.evaluation.coco_eval import evaluate_coco

# COCO ids/names: 4 base, 3 novel (one novel, "cake", never annotated), one outside the 65.
CATS = [
    (1, "person"),
    (3, "car"),
    (38, "kite"),
    (62, "chair"),
    (5, "airplane"),
    (18, "dog"),
    (61, "cake"),
    (10, "traffic light"),
]
ANNOTATED = [1, 3, 38, 62, 5, 18, 10]


def make_gt(seed=0, num_images=6):
  rng = np.random.default_rng(seed)
  images, anns = [], []
  for i in range(1, num_images + 1):
    images.append({"id": i, "width": 200, "height": 160, "file_name": f"{i}.jpg"})
    for _ in range(rng.integers(2, 6)):
      w, h = rng.uniform(8, 90, size=2)
      x, y = rng.uniform(0, 200 - w), rng.uniform(0, 160 - h)
      anns.append(
          {
              "id": len(anns) + 1,
              "image_id": i,
              "category_id": int(rng.choice(ANNOTATED)),
              "bbox": [x, y, w, h],
              "area": w * h,
              "iscrowd": 0,
          }
      )
  anns[3]["iscrowd"] = 1  # crowd regions are ignored, not missed
  return {
      "images": images,
      "annotations": anns,
      "categories": [{"id": i, "name": n} for i, n in CATS],
  }


def make_dets(gt, seed=1):
  """Jittered GT (some missed, some duplicated, some with the wrong class) + false positives."""
  rng = np.random.default_rng(seed)
  ids = [i for i, _ in CATS]
  dets = []
  for a in gt["annotations"]:
    if rng.random() < 0.2:
      continue
    x, y, w, h = a["bbox"]
    for _ in range(1 + (rng.random() < 0.3)):
      j = rng.normal(0, 0.12, size=4) * [w, h, w, h]
      cat = a["category_id"] if rng.random() > 0.15 else int(rng.choice(ids))
      dets.append(
          {
              "image_id": a["image_id"],
              "category_id": cat,
              "bbox": [x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)],
              "score": float(rng.uniform(0.05, 1)),
          }
      )
  for im in gt["images"]:
    for _ in range(4):
      w, h = rng.uniform(8, 60, size=2)
      dets.append(
          {
              "image_id": im["id"],
              "category_id": int(rng.choice(ids)),
              "bbox": [rng.uniform(0, 140), rng.uniform(0, 100), w, h],
              "score": float(rng.uniform(0, 0.8)),
          }
      )
  return dets


def direct_ap50_per_category(gt, dets):
  """AP50 (area all, maxDets 100) of each category by its own COCOeval run (params.catIds=[c])."""
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
    out = {}
    for c in coco_gt.getCatIds():
      ev = COCOeval(coco_gt, coco_dt, "bbox")
      ev.params.catIds = [c]
      ev.evaluate()
      ev.accumulate()
      ev.summarize()
      out[c] = ev.stats[1]  # AP at IoU .50, area all, maxDets 100; -1 without GT
  return out


def mean_valid(values):
  v = [x for x in values if x > -1]
  return 100 * float(np.mean(v)) if v else float("nan")


@pytest.mark.parametrize("seed", [0, 1])
def test_ovd_split_ap50_matches_direct_pycocotools(seed):
  gt = make_gt(seed)
  dets = make_dets(gt, seed + 10)
  m = evaluate_coco(gt, dets, split="coco_ovd")
  direct = direct_ap50_per_category(gt, dets)
  name_to_id = {n: i for i, n in CATS}
  base = [name_to_id[n] for n in C.COCO_OVD_BASE if n in name_to_id]
  novel = [name_to_id[n] for n in C.COCO_OVD_NOVEL if n in name_to_id]
  assert sorted(novel) == [5, 18, 61] and sorted(base) == [1, 3, 38, 62]
  assert direct[61] == -1  # cake has no GT: left out of the mean, not counted as 0
  exp_novel = mean_valid([direct[c] for c in novel])
  exp_base = mean_valid([direct[c] for c in base])
  exp_all = mean_valid([direct[c] for c in base + novel])
  assert m["AP50_novel"] == pytest.approx(exp_novel, abs=1e-9)
  assert m["AP50_base"] == pytest.approx(exp_base, abs=1e-9)
  assert m["AP50_all"] == pytest.approx(exp_all, abs=1e-9)
  # "traffic light" is evaluated by the standard stats but in no split.
  assert m["num_categories_with_gt"] == {"base": 4, "novel": 2, "all": 6}
  assert 5 < m["AP50_novel"] < 99 and 5 < m["AP50_base"] < 99  # non-trivial detections
  for c, v in direct.items():
    got = m["per_category"][dict(CATS)[c]]["AP50"]
    assert (np.isnan(got) and v == -1) or got == pytest.approx(100 * v, abs=1e-9)


def test_standard_stats_match_pycocotools():
  gt, dets = make_gt(3), None
  dets = make_dets(gt, 4)
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
  m = evaluate_coco(gt, dets, split="coco")
  from regionclip_jax.evaluation.coco_eval import COCO_STAT_NAMES

  for k, v in zip(COCO_STAT_NAMES, ev.stats):
    assert (np.isnan(m[k]) and v == -1) or m[k] == pytest.approx(100 * v, abs=1e-9), k
  assert np.isnan(m["APl"])  # no GT over 96^2 px: -1 in pycocotools, NaN here
  assert "AP50_novel" not in m and m["num_detections"] == len(dets)


def test_hand_computed_ap50():
  gt = {
      "images": [{"id": 1, "width": 100, "height": 100}],
      "annotations": [
          {
              "id": 1,
              "image_id": 1,
              "category_id": 18,
              "bbox": [10, 10, 40, 40],
              "area": 1600,
              "iscrowd": 0,
          },
          {
              "id": 2,
              "image_id": 1,
              "category_id": 1,
              "bbox": [50, 50, 40, 40],
              "area": 1600,
              "iscrowd": 0,
          },
      ],
      "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
  }
  dets = [
      {"image_id": 1, "category_id": 18, "bbox": [10, 10, 40, 40], "score": 0.9},
      # IoU(person det, GT) = 28*40 / (2*1600 - 1120) = 0.54: a hit at 0.5 only
      {"image_id": 1, "category_id": 1, "bbox": [62, 50, 40, 40], "score": 0.8},
  ]
  m = evaluate_coco(gt, dets, split="coco_ovd")
  assert m["AP50_novel"] == pytest.approx(100) and m["AP50_base"] == pytest.approx(100)
  assert m["per_category"]["person"]["AP"] == pytest.approx(10.0)  # 1 of 10 thresholds
  dets[1]["bbox"] = [75, 50, 40, 40]  # IoU 15*40/(3200-600) = 0.23 -> miss
  m = evaluate_coco(gt, dets, split="coco_ovd")
  assert m["AP50_base"] == pytest.approx(0) and m["AP50_all"] == pytest.approx(50)


def test_match_by_name_equals_match_by_id(tmp_path):
  gt = make_gt(5)
  dets = make_dets(gt, 6)
  by_id = evaluate_coco(gt, dets, split="coco_ovd")
  # A detector whose vocabulary is contiguous indices in its own order, with names.
  vocab = [n for _, n in CATS][::-1]
  id_to_name = dict(CATS)
  named = {
      "categories": [{"id": k, "name": n.upper().replace(" ", "_")} for k, n in enumerate(vocab)],
      "detections": [dict(d, category_id=vocab.index(id_to_name[d["category_id"]])) for d in dets],
  }
  path = tmp_path / "dets.json"
  path.write_text(json.dumps(named))
  by_name = evaluate_coco(gt, path, split="coco_ovd")
  per_det_name = [dict(d, category_id=-7, category_name=id_to_name[d["category_id"]]) for d in dets]
  by_field = evaluate_coco(gt, per_det_name, split="coco_ovd")
  for k in ("AP", "AP50_novel", "AP50_base", "AP50_all"):
    assert by_name[k] == pytest.approx(by_id[k]) and by_field[k] == pytest.approx(by_id[k])


def test_errors_and_empty(tmp_path):
  gt = make_gt(0)
  with pytest.raises(ValueError, match="unknown category_id 999"):
    evaluate_coco(gt, [{"image_id": 1, "category_id": 999, "bbox": [0, 0, 5, 5], "score": 1.0}])
  with pytest.raises(ValueError, match="'zebra'"):
    evaluate_coco(
        gt, [{"image_id": 1, "category_name": "zebra", "bbox": [0, 0, 5, 5], "score": 1.0}]
    )
  with pytest.raises(ValueError, match="unknown image_id 77"):
    evaluate_coco(gt, [{"image_id": 77, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}])
  m = evaluate_coco(
      gt,
      [{"image_id": 1, "category_id": 999, "bbox": [0, 0, 5, 5], "score": 1.0}],
      on_unknown="drop",
  )
  assert m["dropped_detections"] == 1 and m["AP"] == 0.0
  m = evaluate_coco(gt, [], split="coco_ovd")
  assert m["AP50_novel"] == 0.0 and m["AP"] == 0.0 and "no detections" in m["note"]
  assert np.isnan(m["per_category"]["cake"]["AP50"])
  with pytest.raises(FileNotFoundError, match="missing.json"):
    evaluate_coco(tmp_path / "missing.json", [])
  bad = tmp_path / "bad.json"
  bad.write_text("[{")
  with pytest.raises(ValueError, match="bad.json"):
    evaluate_coco(gt, bad)
  with pytest.raises(ValueError, match="valid splits"):
    evaluate_coco(gt, [], split="voc")


def test_custom_vocabulary_split():
  gt = make_gt(2)
  dets = make_dets(gt, 3)
  m = evaluate_coco(gt, dets, base_names=["person", "car"], novel_names=["kite"])
  direct = direct_ap50_per_category(gt, dets)
  assert m["AP50_novel"] == pytest.approx(mean_valid([direct[38]]))
  assert m["AP50_base"] == pytest.approx(mean_valid([direct[1], direct[3]]))


def test_array_round_trip_perfect_and_shifted():
  from regionclip_jax.evaluation import detections_to_coco, ground_truth_to_coco

  rng = np.random.default_rng(0)
  n, k = 3, 5
  xy = rng.uniform(0, 30, size=(n, k, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(8, 30, size=(n, k, 2))], -1)
  labels = rng.integers(0, 3, size=(n, k))
  valid = rng.random((n, k)) < 0.8
  valid[:, 0] = True
  vocab = [{"id": 0, "name": "circle"}, {"id": 1, "name": "star"}, {"id": 2, "name": "ring"}]
  gt = ground_truth_to_coco([7, 8, 9], boxes, labels, valid, [[64, 64]] * n, vocab)
  assert len(gt["annotations"]) == int(valid.sum())
  # Detector vocabulary in another order with other ids: matched by the names it carries.
  det_vocab = [{"id": 100 + i, "name": v["name"]} for i, v in enumerate(vocab[::-1])]
  dets = detections_to_coco([7, 8, 9], boxes, np.full((n, k), 0.9), 2 - labels, valid, det_vocab)
  m = evaluate_coco(gt, dets, base_names=["circle", "star"], novel_names=["ring"])
  assert m["AP"] == pytest.approx(100) and m["AP50_novel"] == pytest.approx(100)
  shifted = detections_to_coco(
      [7, 8, 9], boxes + 40, np.full((n, k), 0.9), 2 - labels, valid, det_vocab
  )
  assert evaluate_coco(gt, shifted, split=None)["AP50"] == pytest.approx(0)
  with pytest.raises(ValueError, match="must agree"):
    ground_truth_to_coco([1], boxes[:1], labels[:1, :2], valid[:1], [[64, 64]], vocab)
