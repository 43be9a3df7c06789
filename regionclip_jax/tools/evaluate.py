r"""Evaluate a detections json against COCO / LVIS ground truth and print a metrics table.

  python -m regionclip_jax.tools.evaluate --annotations=GT.json --detections=DETS.json \
      --split=coco_ovd|coco|lvis [--output=metrics.json] [--on_error=strict|skip]

Categories are matched by name when the detections carry names (a `category_name` per detection,
or a {"categories": [...], "detections": [...]} file), else by id. `coco_ovd` reports AP50 over
the 17 novel / 48 base / 65 classes (mean over the split's classes that have ground truth);
`--base_names` / `--novel_names` define another vocabulary's split. Figures are percent.

Bad detection records (a missing or mistyped field, a non-finite, huge or negative-size box, a
non-finite score, an image or category the ground truth lacks): `--on_error=strict` (default)
stops with one line naming the file, the record's index and the problem; `skip` warns for the
first 10, scores the rest and reports the counts by kind in the table and the metrics json
(`detections_read`, `dropped_detections`, `detection_issues`). An unreadable or empty file, a
file that is not a list of results and a bad ground-truth record stop in both modes.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Callable, Sequence

from absl import app, flags

from regionclip_jax.data.validation import IssueCounter, check_policy
from regionclip_jax.evaluation.coco_eval import COCO_STAT_NAMES, evaluate_coco
from regionclip_jax.evaluation.detections_io import (
    check_ground_truth,
    load_detections,
    load_json,
    write_json,
)
from regionclip_jax.evaluation.lvis_eval import (
    LVIS_STAT_NAMES,
    check_lvis_ground_truth,
    evaluate_lvis,
)

SPLITS = ("coco_ovd", "coco", "lvis")

_ANNOTATIONS = flags.DEFINE_string("annotations", None, "ground-truth COCO / LVIS json")
_DETECTIONS = flags.DEFINE_string("detections", None, "detections json (COCO results format)")
_SPLIT = flags.DEFINE_enum("split", "coco_ovd", SPLITS, "which metrics to report")
_OUTPUT = flags.DEFINE_string("output", None, "write the metrics here as json")
_BASE = flags.DEFINE_list("base_names", None, "comma-separated base class names (custom split)")
_NOVEL = flags.DEFINE_list("novel_names", None, "comma-separated novel class names (custom split)")
_ON_ERROR = flags.DEFINE_enum(
    "on_error",
    "strict",
    ("strict", "skip"),
    "a bad detection record (unknown image / category included): stop, or skip and count it",
)
_MAX_DETS = flags.DEFINE_integer("max_dets", 300, "LVIS: detections kept per image")
_PER_CATEGORY = flags.DEFINE_bool("per_category", False, "also print per-category AP50")


def run(
    annotations: str,
    detections: str,
    split: str = "coco_ovd",
    output: str | None = None,
    base_names: Sequence[str] | None = None,
    novel_names: Sequence[str] | None = None,
    on_error: str = "strict",
    max_dets: int = 300,
    warn: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
  """Computes (and optionally writes) the metrics dict; see evaluate_coco / evaluate_lvis.

  Bad detection records follow `on_error` (module docstring); `warn` gets the skip warnings."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
  check_policy(on_error)
  gt = load_json(annotations, "annotations")
  gt = check_lvis_ground_truth(gt) if split == "lvis" else check_ground_truth(gt)
  named = isinstance(detections, (str, os.PathLike))
  issues = IssueCounter(os.path.basename(detections) if named else "detections", warn=warn or _warn)
  hint = "rerun with --on_error=skip to leave such records out and count them"
  results, dropped = load_detections(detections, gt, policy=on_error, counter=issues, hint=hint)
  if split == "lvis":
    metrics = evaluate_lvis(gt, results, max_dets=max_dets)
  else:
    metrics = evaluate_coco(
        gt, results, split=split, base_names=base_names, novel_names=novel_names
    )
  metrics = {
      "split": split,
      "annotations": str(annotations),
      "detections": str(detections),
      **metrics,
      "detections_read": len(results) + dropped,
      "dropped_detections": dropped,
      "detection_issues": issues.counts,
  }
  if issues.total():
    metrics["detection_issue_examples"] = issues.examples
  if output:
    write_json(output, metrics)
  return metrics


def _warn(message: str) -> None:
  print(f"evaluate: warning: {message}", file=sys.stderr)


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return "n/a" if math.isnan(v) else f"{v:.2f}"
  return str(v)


def format_table(metrics: dict[str, Any], per_category: bool = False) -> str:
  """Markdown table of the headline figures (split AP50 first), then counts and notes."""
  keys = [k for k in ("AP50_novel", "AP50_base", "AP50_all") if k in metrics]
  if metrics.get("split") == "lvis":
    keys += [k for k in LVIS_STAT_NAMES if k in metrics]
    keys += [k for k in metrics if k.startswith("AR") and "@" in k]
  else:
    keys += list(COCO_STAT_NAMES)
  rows = ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(metrics[k])} |" for k in keys]
  for k in ("num_images", "detections_read", "num_detections", "dropped_detections"):
    rows.append(f"| {k} | {metrics.get(k)} |")
  for kind, n in sorted(metrics.get("detection_issues", {}).items()):
    rows.append(f"| dropped: {kind} | {n} |")
  for group in ("num_categories_with_gt", "num_categories"):
    if group in metrics:
      rows.append(f"| {group} | " + ", ".join(f"{k} {v}" for k, v in metrics[group].items()) + " |")
  if per_category and "per_category" in metrics:
    rows += ["", "| category | AP50 | AP | #gt |", "|---|---|---|---|"]
    rows += [
        f"| {n} | {_fmt(v['AP50'])} | {_fmt(v['AP'])} | {v['num_gt']} |"
        for n, v in metrics["per_category"].items()
    ]
  if "note" in metrics:
    rows += ["", f"note: {metrics['note']}"]
  return "\n".join(rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _ANNOTATIONS.value or not _DETECTIONS.value:
    raise app.UsageError("--annotations and --detections are required")
  try:
    metrics = run(
        _ANNOTATIONS.value,
        _DETECTIONS.value,
        _SPLIT.value,
        _OUTPUT.value,
        _BASE.value,
        _NOVEL.value,
        _ON_ERROR.value,
        _MAX_DETS.value,
    )
  except (OSError, ValueError) as e:  # unreadable input, bad records, an unwritable --output
    print(f"evaluate: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_table(metrics, per_category=_PER_CATEGORY.value))
  if _OUTPUT.value:
    print(f"\nwrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
