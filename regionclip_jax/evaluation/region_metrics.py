"""Zero-shot region recognition: top-1 accuracy of region-vs-concept logits on GT boxes."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _acc(correct: np.ndarray) -> tuple[float, float, int]:
  n = int(correct.size)
  if n == 0:
    return float("nan"), float("nan"), 0
  p = float(correct.mean())
  return p, float(np.sqrt(p * (1 - p) / n)), n


def region_correct(logits, labels, mask=None) -> tuple[np.ndarray, np.ndarray]:
  """-> (correct [M] bool, labels [M]) over the real regions, in order: the per-region outcomes
  that `region_top1` groups and `paired_difference` compares between two models scored on the
  same regions. logits [N, C] or [B, R, C]; labels and mask ([N] / [B, R]) as in `region_top1`."""
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  if logits.ndim < 2 or logits.shape[:-1] != labels.shape:
    raise ValueError(
        f"region metrics: logits [..., C] {logits.shape} and labels {labels.shape} "
        f"must share leading dims"
    )
  logits = logits.reshape(-1, logits.shape[-1])
  labels = labels.reshape(-1).astype(np.int64)
  mask = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
  if mask.shape != labels.shape:
    raise ValueError(f"region metrics: mask {mask.shape} must match labels {labels.shape}")
  num_classes = logits.shape[-1]
  bad = mask & ((labels < 0) | (labels >= num_classes))
  if bad.any():
    raise ValueError(f"region metrics: label {labels[bad][0]} out of range [0, {num_classes})")
  return (logits.argmax(-1) == labels)[mask], labels[mask]


def region_top1(
    logits, labels, mask=None, base_ids: Sequence[int] = (), novel_ids: Sequence[int] = ()
) -> dict[str, float | int]:
  """Top-1 accuracy over all / base / novel regions, with binomial standard errors.

  The prediction is the argmax over all C classes (generalised setting: a novel region may be
  mistaken for a base class and vice versa); base / novel pick regions by their true label.
  Args:
    logits: [N, C] (or [B, R, C], flattened). labels: [N] int class indices.
    mask: [N] bool, True for real regions (padding off); None = all.
    base_ids, novel_ids: class indices of each group.
  Returns:
    dict(all, base, novel, se_all, se_base, se_novel, n_all, n_base, n_novel); accuracies are
    fractions, se = sqrt(p (1 - p) / n), NaN for an empty group.
  """
  correct, labels = region_correct(logits, labels, mask)
  out: dict[str, float | int] = {}
  groups = {
      "all": np.ones(labels.shape, bool),
      "base": np.isin(labels, np.asarray(base_ids, np.int64)),
      "novel": np.isin(labels, np.asarray(novel_ids, np.int64)),
  }
  for name, sel in groups.items():
    out[name], out[f"se_{name}"], out[f"n_{name}"] = _acc(correct[sel])
  return out


def paired_difference(correct_a, correct_b) -> tuple[float, float]:
  """Accuracy of a minus accuracy of b on the same regions, with its paired standard error
  std(a_i - b_i) / sqrt(n) (tighter than combining two binomial errors: the regions are shared)."""
  a = np.asarray(correct_a, np.float64).reshape(-1)
  b = np.asarray(correct_b, np.float64).reshape(-1)
  if a.shape != b.shape:
    raise ValueError(f"paired_difference: outcome vectors differ in length ({a.size} vs {b.size})")
  if a.size < 2:
    return float("nan"), float("nan")
  d = a - b
  return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))
