"""Loss functions and jitted steps for RPN training, detector fine-tuning and inference.

Batches follow the data contract: `image` [B,S,S,3] CLIP-normalised, `image_size` [B,2] (h, w),
`boxes` [B,G,4], `box_mask` [B,G], `labels` [B,G] (already mapped to training-vocabulary indices;
-1 or a masked slot = no box, e.g. a novel-class box removed for base-only training).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from regionclip_jax.detection.classifier import text_logits
from regionclip_jax.detection.heads import OpenVocabFasterRCNN, RPNModel
from regionclip_jax.detection.losses import fast_rcnn_losses
from regionclip_jax.detection.postprocess import ensemble_with_pretrained, fast_rcnn_inference
from regionclip_jax.detection.rpn import find_top_rpn_proposals, flatten_predictions
from regionclip_jax.detection.rpn_loss import label_anchors, rpn_losses
from regionclip_jax.detection.sampling import label_and_sample_proposals
from regionclip_jax.detection.settings import InferenceSettings, RoIHeadSettings, RPNSettings
from regionclip_jax.ops.anchors import DefaultAnchorGenerator
from regionclip_jax.train.state import TrainState, apply_gradients, masked_value_and_grad

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
    key = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
    (loss, parts), grads = masked_value_and_grad(
        lambda p: rpn_loss(rpn, anchor_gen, settings, p, batch, key), state.params, mask
    )
    return apply_gradients(state, grads, tx, mask), dict(parts, loss=loss)

  return step


def rpn_proposals(
    rpn: RPNModel,
    anchor_gen,
    settings: RPNSettings,
    variables,
    images,
    image_sizes,
    pre_nms_topk: int,
    post_nms_topk: int,
):
  """Frozen RPN -> (boxes [N,P,4], objectness logits [N,P], valid [N,P]), P = post_nms_topk."""
  logits, deltas = rpn.apply(jax.lax.stop_gradient(variables), images)
  anchors, fl, fd = flatten_predictions(anchor_gen, logits, deltas)
  return find_top_rpn_proposals(
      anchors,
      fl,
      fd,
      image_sizes,
      pre_nms_topk=pre_nms_topk,
      post_nms_topk=post_nms_topk,
      nms_thresh=settings.nms_thresh,
      min_box_size=settings.min_box_size,
  )


def make_proposal_fn(rpn: RPNModel, anchor_gen, settings: RPNSettings, training: bool = False):
  """-> jitted `fn(rpn_variables, images, image_sizes) -> (boxes, logits, valid)` with the train
  (12000 / 2000) or test (6000 / 1000) top-k."""
  pre = settings.pre_nms_topk_train if training else settings.pre_nms_topk_test
  post = settings.post_nms_topk_train if training else settings.post_nms_topk_test
  return jax.jit(lambda v, im, hw: rpn_proposals(rpn, anchor_gen, settings, v, im, hw, pre, post))


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


def make_region_fn(det: OpenVocabFasterRCNN) -> Callable:
  """-> jitted `fn(params, images, boxes [N,R,4]) -> (region_feats [N,R,D], deltas [N,R,4])`.
  Vocabulary-independent: compiled once per image / RoI shape whatever the class list."""
  return jax.jit(lambda params, images, boxes: det.apply(params, images, boxes))


def make_classify_fn(s: InferenceSettings) -> Callable:
  """-> jitted `fn(region_feats, deltas, proposals, proposal_valid, image_sizes, text_emb,
  objectness=None, pretrained_feats=None, seen=None) -> detections` (see `fast_rcnn_inference`).
  With `pretrained_feats` [N,R,D] (the frozen init's region embeddings of the same boxes) and
  `seen` [K], scores are `ensemble_with_pretrained` with `s.pretrained_score_weights`. Cheap;
  recompiles only when the number of classes changes."""

  def fn(
      feats,
      deltas,
      proposals,
      proposal_valid,
      image_sizes,
      text_emb,
      objectness=None,
      pretrained_feats=None,
      seen=None,
  ):
    logits = text_logits(feats, text_emb, s.temperature)
    probs = None
    if pretrained_feats is not None:
      probs = ensemble_with_pretrained(
          logits,
          text_logits(pretrained_feats, text_emb, s.temperature),
          seen,
          s.pretrained_score_weights,
      )
    return fast_rcnn_inference(
        logits,
        deltas,
        proposals,
        proposal_valid,
        image_sizes,
        objectness=objectness,
        rpn_fusion=s.rpn_fusion,
        score_thresh=s.score_thresh,
        nms_thresh=s.nms_thresh,
        topk=s.topk,
        soft_nms_enabled=s.soft_nms_enabled,
        soft_nms_sigma=s.soft_nms_sigma,
        soft_nms_prune=s.soft_nms_prune,
        max_candidates=s.max_candidates,
        apply_deltas=s.apply_deltas,
        probs=probs,
    )

  return jax.jit(fn)
