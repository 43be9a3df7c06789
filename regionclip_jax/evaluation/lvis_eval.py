"""LVIS v1 box AP with the `lvis` package: AP, APr (the novel metric), APc, APf, ... in percent.

LVIS is federated: a detection counts only on images where its category is verified present or
absent (`neg_category_ids`), and false positives on `not_exhaustive_category_ids` are not
penalised; the `lvis` package does all of this. Official limit: 300 detections per image.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from typing import Any, Mapping

import numpy as np
from lvis import LVIS, LVISEval, LVISResults

from regionclip_jax.data import categories as cats_lib
from regionclip_jax.evaluation.detections_io import check_ground_truth, load_detections, load_json

LVIS_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def check_lvis_ground_truth(gt: Mapping, what: str = "annotations") -> dict:
  gt = check_ground_truth(gt, what)
  for c in gt["categories"]:
    if c.get("frequency") not in cats_lib.LVIS_FREQUENCIES:
      raise ValueError(
          f"{what}: LVIS category {c.get('id')} ({c.get('name')!r}) needs a "
          f"'frequency' in {cats_lib.LVIS_FREQUENCIES}"
      )
  for im in gt["images"]:
    for key in ("neg_category_ids", "not_exhaustive_category_ids"):
      if key not in im:
        raise ValueError(f"{what}: LVIS image {im.get('id')} lacks {key!r}")
  return gt


@contextlib.contextmanager
def numpy_float_alias():
  """lvis 0.5.3 (the last release) calls `np.float`, removed in numpy 2; alias it only meanwhile."""
  added = "float" not in np.__dict__
  if added:
    np.float = float
  try:
    yield
  finally:
    if added:
      del np.float


def _lvis_from_dict(gt: Mapping) -> LVIS:
  # The lvis package reads ground truth only from a file.
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "gt.json")
    with open(path, "w") as f:
      json.dump(gt, f)
    return LVIS(path)


def evaluate_lvis(
    annotations: str | os.PathLike | Mapping,
    detections: Any,
    *,
    max_dets: int = 300,
    on_unknown: str = "error",
    verbose: bool = False,
) -> dict[str, Any]:
  """LVIS box metrics (percent) of a detections json against an LVIS ground-truth json.

  Returns:
    dict: LVIS_STAT_NAMES, f"AR@{max_dets}" and its s/m/l variants, `num_categories`
    {r, c, f, base, novel}, `num_detections`, `dropped_detections`, and `note` when there were
    no detections (every metric is then 0).
  """
  gt = check_lvis_ground_truth(load_json(annotations, "annotations"))
  results, dropped = load_detections(detections, gt, on_unknown=on_unknown)
  split = cats_lib.lvis_split_ids(gt["categories"])
  metrics: dict[str, Any] = {
      "num_detections": len(results),
      "dropped_detections": dropped,
      "num_images": len(gt["images"]),
      "num_categories": {k: len(v) for k, v in split.items()},
  }
  ar_keys = [f"AR@{max_dets}"] + [f"AR{a}@{max_dets}" for a in "sml"]
  if not results:
    # LVISResults cannot take an empty list; nothing detected means 0 everywhere.
    metrics.update({k: 0.0 for k in (*LVIS_STAT_NAMES, *ar_keys)})
    metrics["note"] = "no detections: all metrics are 0"
    return metrics

  logger = logging.getLogger("lvis")
  level = logger.level
  if not verbose:
    logger.setLevel(logging.ERROR)  # its "Assuming user provided the results..." warning
  try:
    with contextlib.redirect_stdout(io.StringIO()) as buf, numpy_float_alias():
      lvis_gt = _lvis_from_dict(gt)
      lvis_dt = LVISResults(lvis_gt, results, max_dets=max_dets)
      ev = LVISEval(lvis_gt, lvis_dt, iou_type="bbox")
      ev.params.max_dets = max_dets
      ev.run()
      ev.print_results()
  finally:
    logger.setLevel(level)
  if verbose:
    print(buf.getvalue())
  for k, v in ev.get_results().items():
    metrics[k] = float(v * 100) if v >= 0 else float("nan")
  return metrics
