"""Detector post-processing (`fast_rcnn_inference`, official RegionCLIP semantics, static shapes)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from regionclip_jax.ops.boxes import Box2BoxTransform, clip_boxes
from regionclip_jax.ops.nms import batched_nms, soft_nms


def fuse_rpn_scores(probs: jax.Array, objectness: jax.Array, mode: Optional[str]) -> jax.Array:
  """probs [..., R, C], objectness logits [..., R] -> fused [..., R, C].

  "raw_logit" (official MULTIPLY_RPN_SCORE): sqrt(p * logit); a negative logit gives NaN in
  PyTorch, and the official post-processing then drops the whole row as non-finite: here such
  rows get NaN too and `fast_rcnn_inference` drops them. "sigmoid": sqrt(p * sigmoid(logit)).
  None: probs unchanged.
  """
  if mode is None or mode == "none":
    return probs
  if mode == "raw_logit":
    prod = probs * objectness[..., None]
    return jnp.where(prod >= 0, jnp.sqrt(jnp.maximum(prod, 0.0)), jnp.nan)
  if mode == "sigmoid":
    return jnp.sqrt(probs * jax.nn.sigmoid(objectness)[..., None])
  raise ValueError(f"{__name__}: rpn fusion must be None|'raw_logit'|'sigmoid', got {mode!r}")


def ensemble_with_pretrained(
    det_logits: jax.Array, pretrained_logits: jax.Array, seen: jax.Array, weights: tuple
) -> jax.Array:
  """Score ensemble of a fine-tuned detector with its frozen pretrained init (ViLD-ensemble,
  Gu et al. 2022; F-VLM, Kuo et al. 2023) - not part of RegionCLIP's recipe.

  det_logits [..., K+1] and pretrained_logits [..., K+1] (last column background; the pretrained
  model never learnt one, so its background column is ignored), seen [K] bool (the classes the
  detector was fine-tuned on), weights (w_seen, w_unseen) = the pretrained model's exponent:
  class c scores p_det(c)^(1 - w) * p_pre(c)^w, p_pre a softmax over the K classes. Base-only
  fine-tuning overwrites what the pretrained region embedding knew about the classes it never
  saw; a large w_unseen keeps it for them. Unlike zero-shot detection (`finetune.
  zero_shot_detection`, K+1 with the zero background logit), p_pre has no background: the
  detector's own background column ranks clutter. -> scores [..., K+1], the last column the
  detector's background probability. Not normalised (with unequal weights they may sum past one),
  as in both papers: pass them to `fast_rcnn_inference` as `probs`.
  """
  w_seen, w_unseen = weights
  # in log space: at temperature 0.01 the probabilities underflow
  log_det = jax.nn.log_softmax(det_logits.astype(jnp.float32), -1)
  log_pre = jax.nn.log_softmax(pretrained_logits[..., :-1].astype(jnp.float32), -1)
  w = jnp.where(jnp.asarray(seen, bool), w_seen, w_unseen)
  cls = jnp.exp((1.0 - w) * log_det[..., :-1] + w * log_pre)
  return jnp.concatenate([cls, jnp.exp(log_det[..., -1:])], -1)


def fast_rcnn_inference(
    logits: jax.Array,
    deltas: jax.Array,
    proposals: jax.Array,
    proposal_valid: jax.Array,
    image_sizes: jax.Array,
    *,
    objectness: Optional[jax.Array] = None,
    rpn_fusion: Optional[str] = None,
    report_unfused: bool = False,
    score_thresh: float = 0.001,
    nms_thresh: float = 0.5,
    topk: int = 100,
    soft_nms_enabled: bool = False,
    soft_nms_sigma: float = 0.5,
    soft_nms_prune: float = 0.001,
    max_candidates: int = 2000,
    apply_deltas: bool = True,
    box_weights=(10.0, 10.0, 5.0, 5.0),
    probs: Optional[jax.Array] = None,
) -> dict:
  """Softmax over K+1, drop background, threshold, per-class NMS (or gaussian soft-NMS), top-k.

  logits [N,R,K+1], deltas [N,R,4] (class-agnostic), proposals [N,R,4], proposal_valid [N,R],
  probs [N,R,K+1]: class scores to use instead of softmax(logits) (e.g. a score ensemble),
  image_sizes [N,2] (h, w) -> dict of `boxes` [N,T,4], `scores` [N,T], `classes` [N,T] int32,
  `valid` [N,T], `roi_index` [N,T] (T = topk), sorted by score.
  With `rpn_fusion`, ranking and the reported scores are the fused ones (official evaluation,
  `MODEL.CLIP.VIS` False); `report_unfused` reports the un-fused probability after NMS instead
  (official `VIS` True, its visualisation configs). Soft-NMS always reports its decayed fused
  scores, as the official code does.
  Static-shape deviation: only the `max_candidates` best (RoI, class) pairs above the threshold
  enter NMS (official: all of them); with K*R candidates this bounds memory and time.
  """
  n, r, k1 = logits.shape
  k = k1 - 1
  b2b = Box2BoxTransform(weights=tuple(box_weights))
  if probs is None:
    probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
  probs = probs.astype(jnp.float32)
  unfused = probs
  if objectness is not None:
    probs = fuse_rpn_scores(probs, objectness, rpn_fusion)
  if apply_deltas:
    boxes = b2b.apply_deltas(
        deltas.reshape(-1, 4).astype(jnp.float32), proposals.reshape(-1, 4).astype(jnp.float32)
    ).reshape(n, r, 4)
  else:
    boxes = proposals.astype(jnp.float32)
  num_cand = min(max_candidates, r * k)

  def one_image(p, pu, b, v, hw):
    b = clip_boxes(b, hw[0], hw[1])
    finite = jnp.all(jnp.isfinite(b), -1) & jnp.all(jnp.isfinite(p), -1) & v
    s = p[:, :k]
    keep = (s > score_thresh) & finite[:, None]
    flat = jnp.where(keep, s, -1.0).reshape(-1)
    top_s, top_i = jax.lax.top_k(flat, num_cand)
    cvalid = top_s > score_thresh
    roi = top_i // k
    cls = (top_i % k).astype(jnp.int32)
    cb = jnp.where(cvalid[:, None], b[roi], 0.0)
    cs = jnp.where(cvalid, top_s, 0.0)
    cu = jnp.where(cvalid, pu[:, :k].reshape(-1)[top_i], 0.0)
    if soft_nms_enabled:
      idx, new_s, ovalid = soft_nms(
          cb,
          cs,
          sigma=soft_nms_sigma,
          score_threshold=soft_nms_prune,
          max_output=topk,
          valid=cvalid,
          classes=cls,
      )
      out_s = new_s  # official: soft-NMS scores replace the reported ones
    else:
      idx, ovalid = batched_nms(cb, cs, cls, nms_thresh, topk, valid=cvalid)
      # NMS and top-k rank the fused scores; official fast_rcnn.py reports them too unless VIS
      out_s = cu[idx] if report_unfused else cs[idx]
    return {
        "boxes": jnp.where(ovalid[:, None], cb[idx], 0.0),
        "scores": jnp.where(ovalid, out_s, 0.0),
        "classes": jnp.where(ovalid, cls[idx], -1),
        "valid": ovalid,
        "roi_index": jnp.where(ovalid, roi[idx], -1),
    }

  return jax.vmap(one_image)(probs, unfused, boxes, proposal_valid, image_sizes)
