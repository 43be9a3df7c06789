"""Losses and training steps: the offline RPN and detector fine-tuning (inference: inference.py).

Batches follow the data contract: `image` [B,S,S,3] CLIP-normalised, `image_size` [B,2] (h, w),
`boxes` [B,G,4], `box_mask` [B,G], `labels` [B,G] (already mapped to training-vocabulary indices;
-1 or a masked slot = no box, e.g. a novel-class box removed for base-only training).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from regionclip_jax.detection.classifier import text_logits
from regionclip_jax.detection.heads import OpenVocabFasterRCNN, RPNModel
from regionclip_jax.detection.inference import rpn_proposals
from regionclip_jax.detection.losses import fast_rcnn_losses
from regionclip_jax.detection.rpn import flatten_predictions
from regionclip_jax.detection.rpn_loss import label_anchors, rpn_losses
from regionclip_jax.detection.sampling import label_and_sample_proposals
from regionclip_jax.detection.settings import RoIHeadSettings, RPNSettings
from regionclip_jax.ops.anchors import DefaultAnchorGenerator
from regionclip_jax.train.state import TrainState, apply_gradients, masked_value_and_grad
from regionclip_jax.data.transforms import normalize_batch

PyTree = Any


# ----------------------------------------------------------------------------- RPN


def rpn_loss(
    rpn: RPNModel,
    anchor_gen: DefaultAnchorGenerator,
    s: RPNSettings,
    params: PyTree,
    batch: dict,
    key: jax.Array,
):
  logits, deltas = rpn.apply(params, batch["image"])
  anchors, fl, fd = flatten_predictions(anchor_gen, logits, deltas)
  anchors = jnp.concatenate(anchors, 0)
  obj = jnp.concatenate(fl, 1)
  dlt = jnp.concatenate(fd, 1)
  gt_valid = batch["box_mask"] & (batch["labels"] >= 0)
  keys = jax.random.split(key, obj.shape[0])
  labels, matched = jax.vmap(
      lambda k, b, v: label_anchors(
          k,
          anchors,
          b,
          v,
          iou_thresholds=s.iou_thresholds,
          batch_size_per_image=s.batch_size_per_image,
          positive_fraction=s.positive_fraction,
      )
  )(keys, batch["boxes"], gt_valid)
  losses = rpn_losses(
      obj,
      dlt,
      anchors,
      labels,
      matched,
      batch_size_per_image=s.batch_size_per_image,
      loss_weight=s.loss_weight,
  )
  return sum(losses.values()), losses


def make_rpn_step(rpn: RPNModel, anchor_gen, settings: RPNSettings, tx, mask, seed: int = 0):
  """-> `step(state, batch, frozen=None) -> (state, metrics)` (jit it, e.g. `train.sharding.jit_step`).
  Sampling randomness is folded from (seed, state.step), so a resumed run repeats it."""

  def step(state: TrainState, batch: dict, frozen=None):
    del frozen
    batch = normalize_batch(batch)  # uint8 from the real presets' host pipelines
    key = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
    (loss, parts), grads = masked_value_and_grad(
        lambda p: rpn_loss(rpn, anchor_gen, settings, p, batch, key), state.params, mask
    )
    return apply_gradients(state, grads, tx, mask), dict(parts, loss=loss)

  return step


# ----------------------------------------------------------------------------- detector


def detector_loss(
    det: OpenVocabFasterRCNN,
    s: RoIHeadSettings,
    params: PyTree,
    batch: dict,
    proposals: jax.Array,
    proposal_valid: jax.Array,
    text_emb: jax.Array,
    key: jax.Array,
):
  """proposals [B,P,4] / proposal_valid [B,P] from the frozen RPN; text_emb [K,D] frozen."""
  num_classes = text_emb.shape[0]
  gt_valid = batch["box_mask"] & (batch["labels"] >= 0)
  keys = jax.random.split(key, proposals.shape[0])
  smp = jax.vmap(
      lambda k, p, pv, gb, gc, gv: label_and_sample_proposals(
          k,
          p,
          pv,
          gb,
          gc,
          gv,
          num_classes=num_classes,
          batch_size_per_image=s.batch_size_per_image,
          positive_fraction=s.positive_fraction,
          iou_threshold=s.iou_threshold,
      )
  )(
      keys,
      jax.lax.stop_gradient(proposals),
      proposal_valid,
      batch["boxes"],
      batch["labels"].astype(jnp.int32),
      gt_valid,
  )
  feats, deltas = det.apply(params, batch["image"], smp["boxes"])
  logits = text_logits(feats, text_emb, s.temperature)
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  losses = fast_rcnn_losses(
      flat(logits),
      flat(deltas),
      flat(smp["boxes"]),
      flat(smp["gt_boxes"]),
      flat(smp["gt_classes"]),
      flat(smp["valid"]),
      focal_gamma=s.focal_gamma,
      bg_weight=s.bg_weight,
      box_weights=s.box_weights,
      box_loss_weight=s.box_loss_weight,
  )
  return sum(losses.values()), losses


def make_detector_step(
    det: OpenVocabFasterRCNN,
    rpn: RPNModel,
    anchor_gen,
    roi: RoIHeadSettings,
    rpn_settings: RPNSettings,
    tx,
    mask,
    seed: int = 0,
):
  """-> `step(state, batch, frozen) -> (state, metrics)`, frozen = {"rpn": RPN variables,
  "text_emb": [K, D] base-class embeddings}. The frozen RPN runs inside the step (train top-k),
  unless the batch carries precomputed `proposals` [B,P,4] and `proposal_valid` [B,P]."""

  def step(state: TrainState, batch: dict, frozen: dict):
    batch = normalize_batch(batch)  # uint8 from the real presets' host pipelines
    key = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
    if "proposals" in batch:
      props, pvalid = batch["proposals"], batch["proposal_valid"]
    else:
      props, _, pvalid = rpn_proposals(
          rpn,
          anchor_gen,
          rpn_settings,
          frozen["rpn"],
          batch["image"],
          batch["image_size"],
          rpn_settings.pre_nms_topk_train,
          rpn_settings.post_nms_topk_train,
      )
    (loss, parts), grads = masked_value_and_grad(
        lambda p: detector_loss(det, roi, p, batch, props, pvalid, frozen["text_emb"], key),
        state.params,
        mask,
    )
    parts = dict(parts, loss=loss, num_proposals=jnp.mean(jnp.sum(pvalid, -1).astype(jnp.float32)))
    return apply_gradients(state, grads, tx, mask), parts

  return step
