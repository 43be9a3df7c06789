"""Class-agnostic proposal recall (AR@100 / AR@300 / AR@1000) with pycocotools.

The RPN's measure in detectron2's `COCOEvaluator._eval_box_proposals` spirit, computed here with
pycocotools itself: COCOeval on iouType "bbox" with `params.useCats = 0` (every ground-truth box
is one class, every proposal may match it), `maxDets` = the proposal budgets, and AR@N = the mean
over IoU 0.50:0.95 of the recall with the top N proposals (area "all"), as `summarize` averages
it. Reported separately for the ground truth of the base and of the novel classes: the novel
figure is what an open-vocabulary detector can at best find of classes the RPN never saw.
"""

from __future__ import annotations

import contextlib
import io
from typing import Mapping, Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval

from regionclip_jax.evaluation.coco_eval import coco_from_dict

MAX_DETS = (100, 300, 1000)


def _agnostic(gt: Mapping, category_ids: Sequence[int] | None) -> dict:
  """The ground truth restricted to `category_ids` (None: all), relabelled as one class (id 1)."""
  keep = None if category_ids is None else {int(c) for c in category_ids}
  anns = []
  for a in gt["annotations"]:
    if keep is not None and int(a["category_id"]) not in keep:
      continue
    x, y, w, h = (float(v) for v in a["bbox"])
    anns.append(
        {
            "id": len(anns) + 1,
            "image_id": a["image_id"],
            "category_id": 1,
            "bbox": [x, y, w, h],
            "area": float(a.get("area", w * h)),
            "iscrowd": int(a.get("iscrowd", 0)),
        }
    )
  return {
      "images": [
          {"id": im["id"], "height": im["height"], "width": im["width"]} for im in gt["images"]
      ],
      "annotations": anns,
      "categories": [{"id": 1, "name": "object"}],
  }


def proposal_recall(
    gt: Mapping,
    proposals: Sequence[Mapping],
    category_ids: Sequence[int] | None = None,
    max_dets: Sequence[int] = MAX_DETS,
) -> dict[str, float]:
  """AR@N in percent of class-agnostic proposals against a COCO ground truth.

  Args:
    gt: COCO ground-truth dict (images with height / width, annotations, categories).
    proposals: [{"image_id", "bbox" [x, y, w, h] px, "score"}], any number per image; only each
      image's top `max(max_dets)` by score count.
    category_ids: the ground-truth categories whose boxes are to be found (e.g. the novel ones);
      None = every box.
  Returns:
    {"AR@100": ..., "AR@300": ..., "AR@1000": ..., "num_gt": boxes to find}; AR is NaN when
    there is no box to find, 0 when there are no proposals.
  """
  agnostic = _agnostic(gt, category_ids)
  num_gt = sum(1 for a in agnostic["annotations"] if not a["iscrowd"])
  out: dict[str, float] = {"num_gt": num_gt}
  if num_gt == 0:
    return {**out, **{f"AR@{m}": float("nan") for m in max_dets}}
  dets = [
      {
          "image_id": p["image_id"],
          "category_id": 1,
          "bbox": [float(v) for v in p["bbox"]],
          "score": float(p["score"]),
      }
      for p in proposals
  ]
  if not dets:  # pycocotools cannot load an empty result list; nothing proposed finds nothing
    return {**out, **{f"AR@{m}": 0.0 for m in max_dets}}
  coco_gt = coco_from_dict(agnostic)
  with contextlib.redirect_stdout(io.StringIO()):
    coco_dt = coco_gt.loadRes(dets)
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.params.useCats = 0
    ev.params.maxDets = [int(m) for m in max_dets]
    ev.evaluate()
    ev.accumulate()
  recall = ev.eval["recall"]  # [T iou, K = 1 (agnostic), A areas, M maxDets]
  area_all = ev.params.areaRngLbl.index("all")
  for j, m in enumerate(max_dets):
    r = recall[:, 0, area_all, j]
    r = r[r > -1]
    out[f"AR@{m}"] = float(np.mean(r) * 100) if r.size else float("nan")
  return out
