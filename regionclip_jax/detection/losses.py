"""Fast R-CNN losses of RegionCLIP's detector (`FastRCNNOutputLayers.losses`, official semantics)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from regionclip_jax.ops.boxes import Box2BoxTransform


def classification_loss(
    logits: jax.Array,
    gt_classes: jax.Array,
    valid: jax.Array,
    *,
    focal_gamma: Optional[float] = 0.5,
    bg_weight: Optional[float] = 0.2,
) -> jax.Array:
  """logits [M, K+1] (background last), gt_classes [M] in [0, K], valid [M] -> scalar.

  focal_gamma set (COCO): mean over valid RoIs of CE * (1 - p_t) ** gamma * w, with w = bg_weight
  on background RoIs. focal_gamma None (LVIS): weighted CE with PyTorch's weighted-mean semantics,
  sum(w * CE) / sum(w).
  """
  num_bg = logits.shape[-1] - 1
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  tgt = jnp.clip(gt_classes, 0, num_bg)
  logp_t = jnp.take_along_axis(logp, tgt[:, None], -1)[:, 0]
  ce = -logp_t
  w = jnp.ones_like(ce) if bg_weight is None else jnp.where(tgt == num_bg, bg_weight, 1.0)
  v = valid.astype(jnp.float32)
  if focal_gamma is not None:
    # (1 - p_t) ** gamma has an infinite derivative at p_t = 1 for gamma < 1; clamp the base
    scale = jnp.maximum(1.0 - jnp.exp(logp_t), 1e-12) ** focal_gamma
    return jnp.sum(ce * scale * w * v) / jnp.maximum(jnp.sum(v), 1.0)
  return jnp.sum(ce * w * v) / jnp.maximum(jnp.sum(w * v), 1e-12)


def box_regression_loss(
    pred_deltas: jax.Array,
    proposal_boxes: jax.Array,
    gt_boxes: jax.Array,
    gt_classes: jax.Array,
    valid: jax.Array,
    *,
    num_classes: int,
    box_weights=(10.0, 10.0, 5.0, 5.0),
    smooth_l1_beta: float = 0.0,
) -> jax.Array:
  """Class-agnostic box loss: pred_deltas [M, 4], proposal_boxes / gt_boxes [M, 4] ->
  sum over foreground RoIs of smooth-L1 (L1 at beta 0), divided by the number of valid RoIs."""
  b2b = Box2BoxTransform(weights=tuple(box_weights))
  fg = (valid & (gt_classes >= 0) & (gt_classes < num_classes)).astype(jnp.float32)
  # padded / background rows may hold degenerate boxes: give them a unit box so the (stopped)
  # target stays finite, otherwise NaN * 0 would poison the gradient through the mask
  unit = jnp.asarray([0.0, 0.0, 1.0, 1.0], proposal_boxes.dtype)
  src = jnp.where(fg[:, None] > 0, proposal_boxes, unit)
  dst = jnp.where(fg[:, None] > 0, gt_boxes, unit)
  target = jax.lax.stop_gradient(b2b.get_deltas(src, dst))
  diff = jnp.abs(pred_deltas.astype(jnp.float32) - target)
  if smooth_l1_beta > 0:
    diff = jnp.where(
        diff < smooth_l1_beta, 0.5 * diff**2 / smooth_l1_beta, diff - 0.5 * smooth_l1_beta
    )
  diff = diff * fg[:, None]
  return jnp.sum(diff) / jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)


def fast_rcnn_losses(
    logits,
    pred_deltas,
    proposal_boxes,
    gt_boxes,
    gt_classes,
    valid,
    *,
    focal_gamma=0.5,
    bg_weight=0.2,
    box_weights=(10.0, 10.0, 5.0, 5.0),
    smooth_l1_beta=0.0,
    box_loss_weight=1.0,
) -> dict[str, jax.Array]:
  """All RoIs of the batch flattened: logits [M, K+1], pred_deltas [M, 4], boxes [M, 4],
  gt_classes [M], valid [M] -> {"loss_cls", "loss_box_reg"}."""
  num_classes = logits.shape[-1] - 1
  return {
      "loss_cls": classification_loss(
          logits, gt_classes, valid, focal_gamma=focal_gamma, bg_weight=bg_weight
      ),
      "loss_box_reg": box_loss_weight
      * box_regression_loss(
          pred_deltas,
          proposal_boxes,
          gt_boxes,
          gt_classes,
          valid,
          num_classes=num_classes,
          box_weights=box_weights,
          smooth_l1_beta=smooth_l1_beta,
      ),
  }
