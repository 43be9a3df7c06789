r"""Evaluate a detections json against COCO / LVIS ground truth and print a metrics table.

  python -m regionclip_jax.tools.evaluate --annotations=GT.json --detections=DETS.json \
      --split=coco_ovd|coco|lvis [--output=metrics.json]

Categories are matched by name when the detections carry names (a `category_name` per detection,
or a {"categories": [...], "detections": [...]} file), else by id. `coco_ovd` reports AP50 over
the 17 novel / 48 base / 65 classes (mean over the split's classes that have ground truth);
`--base_names` / `--novel_names` define another vocabulary's split. Figures are percent.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Sequence

from absl import app, flags

from regionclip_jax.evaluation.coco_eval import COCO_STAT_NAMES, evaluate_coco
from regionclip_jax.evaluation.detections_io import write_json
from regionclip_jax.evaluation.lvis_eval import LVIS_STAT_NAMES, evaluate_lvis

SPLITS = ("coco_ovd", "coco", "lvis")

_ANNOTATIONS = flags.DEFINE_string("annotations", None, "ground-truth COCO / LVIS json")
_DETECTIONS = flags.DEFINE_string("detections", None, "detections json (COCO results format)")
_SPLIT = flags.DEFINE_enum("split", "coco_ovd", SPLITS, "which metrics to report")
_OUTPUT = flags.DEFINE_string("output", None, "write the metrics here as json")
_BASE = flags.DEFINE_list("base_names", None, "comma-separated base class names (custom split)")
_NOVEL = flags.DEFINE_list("novel_names", None, "comma-separated novel class names (custom split)")
_ON_UNKNOWN = flags.DEFINE_enum(
    "on_unknown",
    "error",
    ("error", "drop"),
    "a detection whose category / image the ground truth lacks",
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
    on_unknown: str = "error",
    max_dets: int = 300,
) -> dict[str, Any]:
  """Computes (and optionally writes) the metrics dict; see evaluate_coco / evaluate_lvis."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
  if split == "lvis":
    metrics = evaluate_lvis(annotations, detections, max_dets=max_dets, on_unknown=on_unknown)
  else:
    metrics = evaluate_coco(
        annotations,
        detections,
        split=split,
        base_names=base_names,
        novel_names=novel_names,
        on_unknown=on_unknown,
    )
  metrics = {
      "split": split,
      "annotations": str(annotations),
      "detections": str(detections),
      **metrics,
  }
  if output:
    write_json(output, metrics)
  return metrics


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
  for k in ("num_images", "num_detections", "dropped_detections"):
    rows.append(f"| {k} | {metrics.get(k)} |")
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
        _ON_UNKNOWN.value,
        _MAX_DETS.value,
    )
  except (FileNotFoundError, ValueError) as e:
    print(f"evaluate: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_table(metrics, per_category=_PER_CATEGORY.value))
  if _OUTPUT.value:
    print(f"\nwrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
