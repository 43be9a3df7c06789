"""COCO box AP with pycocotools, plus the open-vocabulary split AP50 (novel / base / all).

Split AP50 follows OVR-CNN / RegionCLIP: from one COCOeval over every ground-truth category,
take precision[IoU 0.5, all recall points, split's categories, area "all", maxDets 100] and
average the entries > -1. A category without (non-crowd) ground truth is all -1, so this is the
mean over the split's categories that have ground truth of their AP50. All figures are percent.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from regionclip_jax.data import categories as cats_lib
from regionclip_jax.evaluation.detections_io import (
    check_ground_truth,
    load_detections,
    load_json,
    normalise_name,
)

COCO_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


def coco_from_dict(gt: Mapping) -> COCO:
  coco = COCO()
  coco.dataset = dict(gt)
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def resolve_split(
    split: str | None,
    gt_categories: Sequence[Mapping],
    base_names: Sequence[str] | None = None,
    novel_names: Sequence[str] | None = None,
) -> dict[str, list[int]] | None:
  """Ground-truth ids of the split's base / novel / all classes (matched by name).

  Explicit `base_names` / `novel_names` win over `split` (e.g. the shapes world's vocabulary).
  Returns None when there is no base/novel split to report ("coco", or split None).
  """
  if base_names is None and novel_names is None:
    if split in (None, "coco"):
      return None
    if split == "lvis":
      ids = cats_lib.lvis_split_ids(gt_categories)
      return {"base": ids["base"], "novel": ids["novel"], "all": sorted(ids["base"] + ids["novel"])}
    names = cats_lib.split_names(split)
    base_names, novel_names = names["base"], names["novel"]
  key_to_id = {normalise_name(c["name"]): int(c["id"]) for c in gt_categories}
  out = {}
  for part, names in (("base", base_names or []), ("novel", novel_names or [])):
    out[part] = sorted(
        key_to_id[normalise_name(n)] for n in names if normalise_name(n) in key_to_id
    )
  if not out["base"] and not out["novel"]:
    raise ValueError(
        f"none of split {split!r}'s class names occur among the ground truth's "
        f"{len(gt_categories)} categories"
    )
  out["all"] = sorted(set(out["base"]) | set(out["novel"]))
  return out


def split_ap50(
    precision: np.ndarray,
    cat_ids_evaluated: Sequence[int],
    split_cat_ids: Sequence[int],
    iou_index: int,
    area_index: int = 0,
    maxdet_index: int = -1,
) -> float:
  """Mean of the valid (> -1) AP50 precision entries over a split's categories, in percent.

  precision: COCOeval.eval["precision"], [T iou, R recall, K cats, A areas, M maxDets].
  NaN when no category of the split has ground truth.
  """
  pos = {c: k for k, c in enumerate(cat_ids_evaluated)}
  ks = [pos[c] for c in split_cat_ids if c in pos]
  s = precision[iou_index, :, ks, area_index, maxdet_index] if ks else np.zeros((0,))
  s = s[s > -1]
  return float(np.mean(s) * 100) if s.size else float("nan")


def split_ap(
    precision: np.ndarray,
    cat_ids_evaluated: Sequence[int],
    split_cat_ids: Sequence[int],
    area_index: int = 0,
    maxdet_index: int = -1,
) -> float:
  """COCO AP (IoU 0.50:0.95) over a split's categories, in percent: the mean of the valid (> -1)
  precision entries, as pycocotools' own AP is over all categories. precision: [T, R, K, A, M].
  NaN when no category of the split has ground truth."""
  pos = {c: k for k, c in enumerate(cat_ids_evaluated)}
  ks = [pos[c] for c in split_cat_ids if c in pos]
  s = precision[:, :, ks, area_index, maxdet_index] if ks else np.zeros((0,))
  s = s[s > -1]
  return float(np.mean(s) * 100) if s.size else float("nan")


def evaluate_coco(
    annotations: str | os.PathLike | Mapping,
    detections: Any,
    *,
    split: str | None = "coco",
    base_names: Sequence[str] | None = None,
    novel_names: Sequence[str] | None = None,
    on_unknown: str = "error",
    verbose: bool = False,
) -> dict[str, Any]:
  """COCO box metrics (percent) of a detections json against a ground-truth json.

  Args:
    annotations: COCO ground truth (path or dict).
    detections: see `detections_io.load_detections`.
    split: "coco" (standard metrics only), "coco_ovd" (adds AP50_novel/base/all over the 17/48/65
      OVR-CNN classes), "lvis" (base/novel from `frequency`), or any name `categories.split_names`
      knows; `base_names` / `novel_names` override it.
  Returns:
    dict: the 12 standard stats (COCO_STAT_NAMES), `per_category` {name: {AP, AP50, num_gt}},
    with a split also AP50_novel, AP50_base, AP50_all, AP_novel, AP_base, AP_all (IoU
    0.50:0.95) and num_categories_with_gt; `num_detections`,
    `dropped_detections`, and `note` when there were no detections (then every metric over
    categories with ground truth is 0).
  """
  gt = check_ground_truth(load_json(annotations, "annotations"))
  results, dropped = load_detections(detections, gt, on_unknown=on_unknown)
  split_ids = resolve_split(split, gt["categories"], base_names, novel_names)
  coco_gt = coco_from_dict(gt)
  cat_ids = sorted(coco_gt.getCatIds())
  id_to_name = {int(c["id"]): c["name"] for c in gt["categories"]}
  num_gt = {c: len(coco_gt.getAnnIds(catIds=[c], iscrowd=False)) for c in cat_ids}
  has_gt = {c for c, n in num_gt.items() if n > 0}

  metrics: dict[str, Any] = {
      "num_detections": len(results),
      "dropped_detections": dropped,
      "num_images": len(gt["images"]),
  }
  if not results:
    # pycocotools cannot load an empty result list; with nothing detected every AP/AR over
    # categories that have ground truth is exactly 0.
    zero = 0.0 if has_gt else float("nan")
    metrics.update({k: zero for k in COCO_STAT_NAMES})
    metrics["per_category"] = {
        id_to_name[c]: {
            "AP": 0.0 if c in has_gt else float("nan"),
            "AP50": 0.0 if c in has_gt else float("nan"),
            "num_gt": num_gt[c],
        }
        for c in cat_ids
    }
    metrics["note"] = "no detections: all metrics are 0"
    if split_ids is not None:
      for part in ("novel", "base", "all"):
        metrics[f"AP50_{part}"] = 0.0 if has_gt & set(split_ids[part]) else float("nan")
        metrics[f"AP_{part}"] = metrics[f"AP50_{part}"]
      metrics["num_categories_with_gt"] = {p: len(has_gt & set(v)) for p, v in split_ids.items()}
    return metrics

  with contextlib.redirect_stdout(io.StringIO()) as buf:
    coco_dt = coco_gt.loadRes(results)
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  if verbose:
    print(buf.getvalue())
  metrics.update(
      {k: float(v * 100) if v >= 0 else float("nan") for k, v in zip(COCO_STAT_NAMES, ev.stats)}
  )

  p = ev.params
  precision = ev.eval["precision"]
  t50 = int(np.flatnonzero(np.isclose(p.iouThrs, 0.5))[0])
  area_all = p.areaRngLbl.index("all")
  max100 = p.maxDets.index(100) if 100 in p.maxDets else len(p.maxDets) - 1
  per_cat = {}
  for k, c in enumerate(p.catIds):
    pc = precision[:, :, k, area_all, max100]
    p50 = pc[t50][pc[t50] > -1]
    pc = pc[pc > -1]
    per_cat[id_to_name[c]] = {
        "AP": float(pc.mean() * 100) if pc.size else float("nan"),
        "AP50": float(p50.mean() * 100) if p50.size else float("nan"),
        "num_gt": num_gt[c],
    }
  metrics["per_category"] = per_cat
  if split_ids is not None:
    for part in ("novel", "base", "all"):
      metrics[f"AP50_{part}"] = split_ap50(
          precision, p.catIds, split_ids[part], t50, area_all, max100
      )
      metrics[f"AP_{part}"] = split_ap(precision, p.catIds, split_ids[part], area_all, max100)
    metrics["num_categories_with_gt"] = {
        part: len(has_gt & set(v)) for part, v in split_ids.items()
    }
  return metrics
