"""RoI-head proposal labelling and sampling (detectron2 `label_and_sample_proposals`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from regionclip_jax.ops.boxes import pairwise_iou
from regionclip_jax.ops.matcher import Matcher
from regionclip_jax.ops.sampling import subsample_labels


def label_and_sample_proposals(
    key: jax.Array,
    proposals: jax.Array,
    proposal_valid: jax.Array,
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    gt_valid: jax.Array,
    *,
    num_classes: int,
    batch_size_per_image: int = 512,
    positive_fraction: float = 0.25,
    iou_threshold: float = 0.5,
    append_gt: bool = True,
):
  """One image: append GT to the proposals, match at IoU 0.5, sample 512 with <= 25% fg.

  proposals [P, 4], proposal_valid [P], gt_boxes [G, 4], gt_classes [G], gt_valid [G] ->
  dict with `boxes` [S, 4], `gt_classes` [S] (num_classes = background), `gt_boxes` [S, 4],
  `valid` [S] (S = batch_size_per_image; slots past the available RoIs are invalid).
  """
  if append_gt:
    proposals = jnp.concatenate([proposals, gt_boxes.astype(proposals.dtype)], 0)
    proposal_valid = jnp.concatenate([proposal_valid, gt_valid], 0)
  matcher = Matcher([iou_threshold], [0, 1], allow_low_quality_matches=False)
  iou = pairwise_iou(gt_boxes, proposals)
  iou = jnp.where(gt_valid[:, None] & proposal_valid[None, :], iou, -1.0)
  matched_idxs, match_labels = matcher(iou, gt_valid)
  match_labels = jnp.where(jnp.any(gt_valid), match_labels, 0)
  safe = jnp.clip(matched_idxs, 0, gt_boxes.shape[0] - 1)
  cls = jnp.where(match_labels == 1, gt_classes[safe], num_classes)
  cls = jnp.where(match_labels == -1, -1, cls)
  cls = jnp.where(proposal_valid, cls, -1).astype(jnp.int32)
  idx, ok, _ = subsample_labels(
      key, cls, batch_size_per_image, positive_fraction, num_classes, valid=proposal_valid
  )
  return {
      "boxes": jnp.where(ok[:, None], proposals[idx], 0.0),
      "gt_classes": jnp.where(ok, cls[idx], -1),
      "gt_boxes": jnp.where(ok[:, None], gt_boxes[safe][idx], 0.0),
      "valid": ok,
  }
