"""detectron2's IoU `Matcher` on padded ground truth (static shapes, jit / vmap-able)."""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp


class Matcher:
  """Assigns each prediction (column) its best ground truth (row) and a label by IoU bins.

  thresholds [t1, ..., tk] (increasing) and labels [l0, ..., lk]: a prediction whose best IoU v
  falls in [t_{i}, t_{i+1}) (with t_0 = -inf, t_{k+1} = +inf) gets label l_i. Typical labels are
  1 (foreground), 0 (background), -1 (ignore). With `allow_low_quality_matches`, every
  prediction that attains some ground truth's highest IoU (ties included) is relabelled 1 while
  keeping its argmax match, exactly as detectron2 does (including its quirk that a ground truth
  overlapping nothing makes every zero-IoU prediction positive).
  """

  def __init__(
      self,
      thresholds: Sequence[float],
      labels: Sequence[int],
      allow_low_quality_matches: bool = False,
  ):
    thresholds = [float(t) for t in thresholds]
    if any(a > b for a, b in zip(thresholds[:-1], thresholds[1:])):
      raise ValueError(f"{__name__}: thresholds must be increasing, got {thresholds}")
    if len(labels) != len(thresholds) + 1:
      raise ValueError(
          f"{__name__}: need len(labels) == len(thresholds) + 1, got "
          f"{len(labels)} labels for {len(thresholds)} thresholds"
      )
    if any(l not in (-1, 0, 1) for l in labels):
      raise ValueError(f"{__name__}: labels must be in {{-1, 0, 1}}, got {list(labels)}")
    self.thresholds = [-math.inf] + thresholds + [math.inf]
    self.labels = [int(l) for l in labels]
    self.allow_low_quality_matches = allow_low_quality_matches

  def __call__(self, iou, gt_valid=None):
    """iou [G, P], gt_valid [G] bool -> (matched_idxs [P] int32, match_labels [P] int32).

    Invalid (padding) ground truths never match. With no valid ground truth (or G == 0) every
    prediction gets matched index 0 and label labels[0] (detectron2's empty-GT behaviour).
    """
    iou = jnp.asarray(iou)
    if iou.ndim != 2:
      raise ValueError(f"{__name__}: iou must be [G, P], got {tuple(iou.shape)}")
    num_gt, num_pred = iou.shape
    if num_gt == 0:
      return (jnp.zeros((num_pred,), jnp.int32), jnp.full((num_pred,), self.labels[0], jnp.int32))
    if gt_valid is None:
      gt_valid = jnp.ones((num_gt,), bool)
    gt_valid = jnp.asarray(gt_valid, bool)
    if gt_valid.shape != (num_gt,):
      raise ValueError(
          f"{__name__}: gt_valid must be [G] = ({num_gt},), got {tuple(gt_valid.shape)}"
      )
    q = jnp.where(gt_valid[:, None], iou, -jnp.inf)
    matched_vals = jnp.max(q, axis=0)
    matches = jnp.argmax(q, axis=0).astype(jnp.int32)  # first maximum, like torch.max(dim=0)
    labels = jnp.ones((num_pred,), jnp.int32)
    for l, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
      labels = jnp.where((matched_vals >= low) & (matched_vals < high), l, labels)
    if self.allow_low_quality_matches:
      best = jnp.max(q, axis=1, keepdims=True)
      hit = jnp.any((q == best) & gt_valid[:, None], axis=0)
      labels = jnp.where(hit, 1, labels)
    any_gt = jnp.any(gt_valid)
    labels = jnp.where(any_gt, labels, self.labels[0])
    matches = jnp.where(any_gt, matches, 0)
    return matches, labels
