"""Shapes and semantics of every detector piece: RPN head, anchors order, proposals, anchor and
RoI labelling / sampling, region head, post-processing (NMS, soft-NMS, RPN fusion)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionclip_jax.detection import builders
from regionclip_jax.detection.classifier import text_logits
from regionclip_jax.detection.postprocess import fast_rcnn_inference, fuse_rpn_scores
from regionclip_jax.detection.rpn import StandardRPNHead, find_top_rpn_proposals, flatten_predictions
from regionclip_jax.detection.rpn_loss import label_anchors
from regionclip_jax.detection.sampling import label_and_sample_proposals
from regionclip_jax.models.clip import get_config
from regionclip_jax.ops.anchors import DefaultAnchorGenerator


def test_rpn_head_shapes_and_flatten_order():
  gen = DefaultAnchorGenerator(sizes=((16, 32, 48),), aspect_ratios=((1.0,),), strides=(16,))
  head = StandardRPNHead(num_anchors=3)
  f = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 5, 8))
  v = head.init(jax.random.PRNGKey(1), [f])
  logits, deltas = head.apply(v, [f])
  assert logits[0].shape == (2, 4, 5, 3) and deltas[0].shape == (2, 4, 5, 3, 4)
  (anchors,), (fl,), (fd,) = flatten_predictions(gen, logits, deltas)
  assert anchors.shape == (60, 4) and fl.shape == (2, 60) and fd.shape == (2, 60, 4)
  y, x, a = 3, 2, 1
  i = (y * 5 + x) * 3 + a
  assert float(fl[1, i]) == float(logits[0][1, y, x, a])
  np.testing.assert_array_equal(np.asarray(fd[1, i]), np.asarray(deltas[0][1, y, x, a]))
  np.testing.assert_allclose((anchors[i, :2] + anchors[i, 2:]) / 2, [x * 16, y * 16])
  np.testing.assert_allclose(anchors[i, 2] - anchors[i, 0], 32)
  # detectron2 init: N(0, 0.01) convs, zero biases
  assert float(jnp.abs(v["params"]["objectness_logits"]["bias"]).max()) == 0.0


def test_find_top_rpn_proposals_nms_clip_pad():
  anchors = jnp.array(
      [[0, 0, 20, 20], [1, 1, 21, 21], [30, 30, 80, 80], [5, 40, 15, 50]], jnp.float32
  )
  obj = jnp.array([[2.0, 1.0, 3.0, -1.0]])
  deltas = jnp.zeros((1, 4, 4))
  top = jax.jit(
      find_top_rpn_proposals, static_argnames=("pre_nms_topk", "post_nms_topk", "nms_thresh")
  )
  boxes, logits, valid = top(
      [anchors],
      [obj],
      [deltas],
      jnp.array([[60.0, 64.0]]),
      pre_nms_topk=4,
      post_nms_topk=5,
      nms_thresh=0.7,
  )
  assert boxes.shape == (1, 5, 4) and logits.shape == (1, 5) and valid.shape == (1, 5)
  # anchor 1 overlaps anchor 0 at IoU 0.82 > 0.7: suppressed; anchor 2 clipped to (64, 60)
  np.testing.assert_array_equal(np.asarray(valid[0]), [True, True, True, False, False])
  np.testing.assert_allclose(np.asarray(logits[0, :3]), [3.0, 2.0, -1.0])
  np.testing.assert_allclose(np.asarray(boxes[0, 0]), [30, 30, 64, 60])
  np.testing.assert_allclose(np.asarray(boxes[0, 3:]), 0.0)
  assert np.all(np.isneginf(np.asarray(logits[0, 3:])))
  # pre-NMS top-k keeps only the 2 best before NMS
  _, _, valid2 = top(
      [anchors],
      [obj],
      [deltas],
      jnp.array([[60.0, 64.0]]),
      pre_nms_topk=2,
      post_nms_topk=5,
      nms_thresh=0.7,
  )
  assert int(valid2.sum()) == 2


def test_label_anchors_thresholds_low_quality_and_empty():
  anchors = jnp.array(
      [
          [0, 0, 10, 10],  # IoU 1 with gt 0 -> fg
          [0, 0, 10, 20],  # IoU 0.5 -> ignore
          [50, 50, 60, 60],  # IoU 0 -> bg
          [30, 30, 50, 44],
      ],  # best anchor of gt 1 (IoU 0.56 < 0.7): low-quality fg
      jnp.float32,
  )
  gt = jnp.array([[0, 0, 10, 10], [30, 30, 50, 50], [0, 0, 0, 0]], jnp.float32)
  gt_valid = jnp.array([True, True, False])
  lab4 = jax.jit(lambda k, v: label_anchors(k, anchors, gt, v, batch_size_per_image=4))
  labels, matched = lab4(jax.random.PRNGKey(0), gt_valid)
  np.testing.assert_array_equal(np.asarray(labels), [1, -1, 0, 1])
  np.testing.assert_allclose(np.asarray(matched[3]), [30, 30, 50, 50])
  labels, _ = lab4(jax.random.PRNGKey(0), jnp.zeros(3, bool))
  np.testing.assert_array_equal(np.asarray(labels), [0, 0, 0, 0])
  # subsampling: 2 samples at most half positive
  labels, _ = label_anchors(jax.random.PRNGKey(1), anchors, gt, gt_valid, batch_size_per_image=2)
  lab = np.asarray(labels)
  assert (lab == 1).sum() == 1 and (lab == 0).sum() == 1 and (lab == -1).sum() == 2


def test_label_and_sample_proposals_appends_gt_and_caps_positives():
  props = jnp.array(
      [[0, 0, 10, 10], [1, 1, 11, 11], [40, 40, 60, 60], [0, 0, 5, 5], [9, 9, 9, 9]], jnp.float32
  )
  pvalid = jnp.array([True, True, True, True, False])
  gt = jnp.array([[0, 0, 10, 10], [40, 42, 60, 60], [0, 0, 0, 0]], jnp.float32)
  gcls = jnp.array([3, 1, 0])
  gvalid = jnp.array([True, True, False])
  out = label_and_sample_proposals(
      jax.random.PRNGKey(0),
      props,
      pvalid,
      gt,
      gcls,
      gvalid,
      num_classes=5,
      batch_size_per_image=16,
      positive_fraction=0.5,
  )
  for k, shape in (
      ("boxes", (16, 4)),
      ("gt_classes", (16,)),
      ("gt_boxes", (16, 4)),
      ("valid", (16,)),
  ):
    assert out[k].shape == shape
  v = np.asarray(out["valid"])
  cls = np.asarray(out["gt_classes"])[v]
  boxes = np.asarray(out["boxes"])[v]
  # 4 valid proposals + 2 valid GT: 5 foreground (IoU >= 0.5) and 1 background ([0,0,5,5], IoU 0.25)
  assert v.sum() == 6
  assert sorted(cls.tolist()) == [1, 1, 3, 3, 3, 5]
  assert not any(np.allclose(b, [9, 9, 9, 9]) for b in boxes)  # the invalid proposal is never drawn
  fg = cls < 5
  np.testing.assert_allclose(np.asarray(out["gt_boxes"])[v][cls == 1], [[40, 42, 60, 60]] * 2)
  assert any(np.allclose(b, [40, 42, 60, 60]) for b in boxes[fg])  # the appended GT box
  # positive cap: 25% of 4 samples -> 1 foreground
  out = label_and_sample_proposals(
      jax.random.PRNGKey(0),
      props,
      pvalid,
      gt,
      gcls,
      gvalid,
      num_classes=5,
      batch_size_per_image=4,
      positive_fraction=0.25,
  )
  c = np.asarray(out["gt_classes"])[np.asarray(out["valid"])]
  assert (c < 5).sum() == 1 and (c == 5).sum() == 1


def test_detector_outputs_shapes():
  det = builders.build_detector(get_config("tiny_rn"), pooler_resolution=4)
  v = builders.init_detector(det, 64)
  assert set(v["params"]) == {"backbone", "bbox_pred"}
  assert float(jnp.std(v["params"]["bbox_pred"]["kernel"])) < 0.003
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 64, 3))
  boxes = jnp.tile(jnp.array([[[0, 0, 32, 32], [10, 5, 60, 40], [0, 0, 64, 64.0]]]), (2, 1, 1))
  feats, deltas = jax.jit(det.apply)(v, images, boxes)
  assert feats.shape == (2, 3, 64) and deltas.shape == (2, 3, 4)
  assert text_logits(feats, jnp.ones((7, 64))).shape == (2, 3, 8)
  assert np.all(np.isfinite(np.asarray(feats)))


def _infer(logits, proposals, **kw):
  logits = jnp.asarray(logits, jnp.float32)[None]
  r = logits.shape[1]
  fn = jax.jit(
      lambda l, p: fast_rcnn_inference(
          l, jnp.zeros((1, r, 4)), p, jnp.ones((1, r), bool), jnp.array([[100.0, 100.0]]), **kw
      )
  )
  return jax.tree.map(np.asarray, fn(logits, jnp.asarray(proposals, jnp.float32)[None]))


def test_inference_per_class_nms_threshold_topk():
  props = [[0, 0, 20, 20], [1, 1, 21, 21], [50, 50, 90, 90], [1, 1, 21, 21]]
  # probs via logits over (c0, c1, bg)
  logits = [
      [4.0, 0.0, 0.0],  # c0 high
      [3.0, 2.5, 0.0],  # c0 (suppressed by roi 0), c1 kept (other class)
      [0.0, 5.0, 0.0],  # c1
      [-9.0, -9.0, 9.0],
  ]  # background: below threshold
  out = _infer(logits, props, score_thresh=0.05, nms_thresh=0.5, topk=10)
  for k in ("boxes", "scores", "classes", "valid", "roi_index"):
    assert out[k].shape[:2] == (1, 10)
  v = out["valid"][0]
  got = sorted(zip(out["roi_index"][0][v].tolist(), out["classes"][0][v].tolist()))
  assert got == [(0, 0), (1, 1), (2, 1)]
  s = out["scores"][0][v]
  assert np.all(np.diff(s) <= 0)  # sorted by score
  p = jax.nn.softmax(jnp.asarray(logits[2]))
  np.testing.assert_allclose(s[0], float(p[1]), rtol=1e-5)
  np.testing.assert_allclose(out["boxes"][0][0], props[2])  # zero deltas keep the box
  out = _infer(logits, props, score_thresh=0.05, nms_thresh=0.5, topk=2)
  assert out["valid"][0].sum() == 2


def test_soft_nms_decays_same_class_overlaps():
  props = [[0, 0, 20, 20], [0, 0, 20, 10]]  # IoU 0.5
  logits = [[5.0, -5.0, 0.0], [4.0, -5.0, 0.0]]
  out = _infer(logits, props, score_thresh=0.001, topk=4, soft_nms_enabled=True, soft_nms_sigma=0.5)
  p = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1))
  v = out["valid"][0]
  np.testing.assert_allclose(
      out["scores"][0][v][:2], [p[0, 0], p[1, 0] * math.exp(-0.25 / 0.5)], rtol=1e-5
  )


def test_rpn_fusion_raw_logit_and_sigmoid():
  probs = jnp.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]])
  obj = jnp.array([4.0, -1.0])
  raw = np.asarray(fuse_rpn_scores(probs, obj, "raw_logit"))
  np.testing.assert_allclose(raw[0], np.sqrt(np.asarray(probs[0]) * 4.0), rtol=1e-6)
  assert np.all(np.isnan(raw[1]))  # PyTorch: sqrt of a negative -> NaN; the row is then dropped
  sig = np.asarray(fuse_rpn_scores(probs, obj, "sigmoid"))
  np.testing.assert_allclose(sig[1], np.sqrt(np.asarray(probs[1]) / (1 + math.e)), rtol=1e-5)
  with pytest.raises(ValueError, match="detection.postprocess"):
    fuse_rpn_scores(probs, obj, "product")
  # end to end: the negative-logit RoI disappears; the reported score is the fused one (official
  # evaluation), or the un-fused probability with report_unfused (official MODEL.CLIP.VIS)
  props = [[0, 0, 20, 20], [50, 50, 70, 70]]
  logits = [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]]
  logits_a = jnp.asarray(logits, jnp.float32)[None]
  p00 = float(jax.nn.softmax(logits_a[0, 0])[0])
  for report_unfused, want in ((False, math.sqrt(p00 * 4.0)), (True, p00)):
    out = jax.tree.map(
        np.asarray,
        fast_rcnn_inference(
            logits_a,
            jnp.zeros((1, 2, 4)),
            jnp.asarray(props, jnp.float32)[None],
            jnp.ones((1, 2), bool),
            jnp.array([[100.0, 100.0]]),
            objectness=obj[None],
            rpn_fusion="raw_logit",
            report_unfused=report_unfused,
            topk=4,
        ),
    )
    v = out["valid"][0]
    assert set(out["roi_index"][0][v].tolist()) == {0}
    np.testing.assert_allclose(out["scores"][0][v][0], want, rtol=1e-5)


def test_inference_without_deltas_returns_proposals():
  props = [[3, 4, 30, 40]]
  logits = jnp.array([[[5.0, 0.0]]])
  out = jax.tree.map(
      np.asarray,
      fast_rcnn_inference(
          logits,
          jnp.full((1, 1, 4), 0.7),
          jnp.asarray(props, jnp.float32)[None],
          jnp.ones((1, 1), bool),
          jnp.array([[100.0, 100.0]]),
          apply_deltas=False,
          topk=2,
      ),
  )
  np.testing.assert_allclose(out["boxes"][0, 0], props[0])


def test_with_backbone_checks_shapes_and_names():
  det = builders.build_detector(get_config("tiny_rn"), pooler_resolution=4)
  v = builders.init_detector(det, 64)
  src = jax.tree.map(lambda x: x + 1.0, v["params"]["backbone"])
  out = builders.with_backbone(v, {"wrapper": src})  # nested anywhere in a checkpoint tree
  np.testing.assert_allclose(
      np.asarray(out["params"]["backbone"]["visual"]["conv1"]["kernel"]),
      np.asarray(v["params"]["backbone"]["visual"]["conv1"]["kernel"]) + 1.0,
  )
  assert out["params"]["bbox_pred"] is v["params"]["bbox_pred"]
  bad = jax.tree.map(lambda x: x, src)
  bad["visual"] = dict(bad["visual"], conv1={"kernel": jnp.zeros((3, 3, 3, 5))})
  with pytest.raises(ValueError, match="conv1.*shape"):
    builders.with_backbone(v, bad)
  with pytest.raises(ValueError, match="no 'visual'"):
    builders.with_backbone(v, {"x": 1})
