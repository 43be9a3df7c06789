"""RPN training targets and losses (detectron2 `label_and_sample_anchors` + `losses`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from regionclip_jax.ops.boxes import Box2BoxTransform, pairwise_iou
from regionclip_jax.ops.matcher import Matcher
from regionclip_jax.ops.sampling import subsample_labels


def label_anchors(
    key: jax.Array,
    anchors: jax.Array,
    gt_boxes: jax.Array,
    gt_valid: jax.Array,
    *,
    iou_thresholds=(0.3, 0.7),
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
):
  """Assign one image's anchors to GT and subsample them.

  anchors [A, 4], gt_boxes [G, 4], gt_valid [G] -> (labels [A] int32: 1 fg, 0 bg, -1 ignored,
  matched_gt_boxes [A, 4]). Matcher (0.3, 0.7) with low-quality matches, then 256 anchors with at
  most half positive, everything else ignored (detectron2 `label_and_sample_anchors`).
  """
  matcher = Matcher(list(iou_thresholds), [0, -1, 1], allow_low_quality_matches=True)
  iou = pairwise_iou(gt_boxes, anchors)
  iou = jnp.where(gt_valid[:, None], iou, -1.0)
  matched_idxs, match_labels = matcher(iou, gt_valid)
  # no GT at all: every anchor is background
  match_labels = jnp.where(jnp.any(gt_valid), match_labels, 0)
  idx, ok, is_pos = subsample_labels(key, match_labels, batch_size_per_image, positive_fraction, 0)
  num_anchors = anchors.shape[0]
  labels = jnp.full((num_anchors,), -1, jnp.int32)
  # out-of-range index for invalid samples so that the scatter drops them
  tgt = jnp.where(ok, idx, num_anchors)
  labels = labels.at[tgt].set(is_pos.astype(jnp.int32), mode="drop")
  matched = gt_boxes[jnp.clip(matched_idxs, 0, gt_boxes.shape[0] - 1)]
  return labels, matched


def rpn_losses(
    objectness: jax.Array,
    pred_deltas: jax.Array,
    anchors: jax.Array,
    gt_labels: jax.Array,
    matched_gt_boxes: jax.Array,
    *,
    batch_size_per_image: int = 256,
    box_weights=(1.0, 1.0, 1.0, 1.0),
    smooth_l1_beta: float = 0.0,
    loss_weight: float = 1.0,
) -> dict[str, jax.Array]:
  """detectron2 RPN losses.

  objectness [N, A], pred_deltas [N, A, 4], anchors [A, 4], gt_labels [N, A] in {-1, 0, 1},
  matched_gt_boxes [N, A, 4]. Both losses are sums normalised by batch_size_per_image * N.
  """
  n, a = objectness.shape
  b2b = Box2BoxTransform(weights=tuple(box_weights))
  anc = jnp.broadcast_to(anchors[None], (n, a, 4)).reshape(-1, 4)
  pos = (gt_labels == 1).astype(jnp.float32)
  # non-positive anchors may be matched to padded (zero) GT: target their own anchor instead so
  # the masked rows stay finite and cannot turn the gradient into NaN
  dst = jnp.where(pos.reshape(-1, 1) > 0, matched_gt_boxes.reshape(-1, 4), anc)
  gt_deltas = b2b.get_deltas(anc, dst).reshape(n, a, 4)
  valid = (gt_labels >= 0).astype(jnp.float32)
  normalizer = float(batch_size_per_image * n)
  diff = jnp.abs(pred_deltas - jax.lax.stop_gradient(gt_deltas))
  if smooth_l1_beta > 0:
    diff = jnp.where(
        diff < smooth_l1_beta, 0.5 * diff**2 / smooth_l1_beta, diff - 0.5 * smooth_l1_beta
    )
  loc = jnp.sum(diff.sum(-1) * pos) / normalizer
  target = (gt_labels == 1).astype(objectness.dtype)
  bce = sigmoid_bce(objectness, target)
  cls = jnp.sum(bce * valid) / normalizer
  return {"loss_rpn_cls": cls * loss_weight, "loss_rpn_loc": loc * loss_weight}


def sigmoid_bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Numerically stable elementwise binary cross-entropy with logits."""
  return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
