"""Detection inference programs: frozen-RPN proposals, region features, text classification.

Split in three jitted programs so a vocabulary swap recompiles only the cheap last one:
`make_proposal_fn` (RPN + top-k / NMS), `make_region_fn` (backbone + RoI head + box deltas,
vocabulary-independent) and `make_classify_fn` (text-embedding classifier + post-processing).
`predictor.DetectorPredictor` chains them; the detector's training step reuses `rpn_proposals`.
"""

from __future__ import annotations

from typing import Callable

import jax

from regionclip_jax.detection.classifier import text_logits
from regionclip_jax.detection.heads import OpenVocabFasterRCNN, RPNModel
from regionclip_jax.detection.postprocess import ensemble_with_pretrained, fast_rcnn_inference
from regionclip_jax.detection.rpn import find_top_rpn_proposals, flatten_predictions
from regionclip_jax.detection.settings import InferenceSettings, RPNSettings


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
        report_unfused=s.report_unfused,
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
