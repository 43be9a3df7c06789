"""Detector and RPN losses on hand-computed cases (values worked out in the comments)."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.detection.classifier import text_logits
from regionclip_jax.detection.losses import (
    box_regression_loss,
    classification_loss,
    fast_rcnn_losses,
)
from regionclip_jax.detection.rpn_loss import rpn_losses


def test_focal_scaled_ce_with_background_weight():
  # K = 2 classes + background (last column)
  logits = jnp.array(
      [
          [0.0, 0.0, 0.0],  # gt 0: p_t = 1/3
          [math.log(2.0), 0.0, 0.0],  # gt bg: p_t = 1/4
          [5.0, 1.0, 0.0],
      ]
  )  # invalid row, must not count
  gt = jnp.array([0, 2, 1])
  valid = jnp.array([True, True, False])
  got = classification_loss(logits, gt, valid, focal_gamma=0.5, bg_weight=0.2)
  row0 = math.log(3) * (2 / 3) ** 0.5
  row1 = math.log(4) * (3 / 4) ** 0.5 * 0.2
  np.testing.assert_allclose(float(got), (row0 + row1) / 2, rtol=1e-5)


def test_plain_weighted_ce_uses_torch_weighted_mean():
  logits = jnp.array([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
  gt = jnp.array([0, 2])
  valid = jnp.array([True, True])
  got = classification_loss(logits, gt, valid, focal_gamma=None, bg_weight=0.8)
  want = (math.log(3) * 1.0 + math.log(4) * 0.8) / (1.0 + 0.8)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  got = classification_loss(logits, gt, valid, focal_gamma=None, bg_weight=None)
  np.testing.assert_allclose(float(got), (math.log(3) + math.log(4)) / 2, rtol=1e-5)


def test_focal_gradient_finite_at_confident_prediction():
  logits = jnp.array([[60.0, 0.0, 0.0]])
  g = jax.grad(lambda l: classification_loss(l, jnp.array([0]), jnp.array([True])))(logits)
  assert np.all(np.isfinite(np.asarray(g)))


def test_box_loss_l1_over_all_sampled():
  props = jnp.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0], [5, 5, 9, 9]], jnp.float32)
  gts = jnp.array([[1, 1, 11, 11], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], jnp.float32)
  gt_classes = jnp.array([1, 3, 3, 3])  # one foreground, K = 3
  valid = jnp.array([True, True, False, True])
  pred = jnp.zeros((4, 4))
  # target deltas of row 0 with weights (10, 10, 5, 5): (1, 1, 0, 0); L1 = 2; 3 valid RoIs
  loss = box_regression_loss(pred, props, gts, gt_classes, valid, num_classes=3)
  np.testing.assert_allclose(float(loss), 2.0 / 3.0, rtol=1e-5)
  g = jax.grad(lambda d: box_regression_loss(d, props, gts, gt_classes, valid, num_classes=3))(pred)
  assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(np.asarray(g)[1:], 0.0)


def test_fast_rcnn_losses_keys_and_weight():
  logits = jnp.zeros((2, 3))
  out = fast_rcnn_losses(
      logits,
      jnp.zeros((2, 4)),
      jnp.array([[0, 0, 10, 10.0]] * 2),
      jnp.array([[1, 1, 11, 11.0]] * 2),
      jnp.array([0, 2]),
      jnp.array([True, True]),
      box_loss_weight=2.0,
  )
  assert set(out) == {"loss_cls", "loss_box_reg"}
  np.testing.assert_allclose(float(out["loss_box_reg"]), 2.0 * 2.0 / 2, rtol=1e-5)


def test_text_logits_background_zero_and_temperature():
  feats = jnp.array([[3.0, 0.0], [0.0, -2.0]])
  emb = jnp.array([[1.0, 0.0], [0.0, 5.0]])
  l = np.asarray(text_logits(feats, emb, 0.01))
  np.testing.assert_allclose(l, [[100, 0, 0], [0, -100, 0]], atol=1e-4)
  # the text embeddings get no gradient (frozen classifier)
  g = jax.grad(lambda e: text_logits(feats, e).sum())(emb)
  np.testing.assert_allclose(np.asarray(g), 0.0)


def test_rpn_losses_hand_case():
  anchors = jnp.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 4, 4]], jnp.float32)
  obj = jnp.array([[0.0, math.log(3.0), 2.0]])
  deltas = jnp.zeros((1, 3, 4))
  labels = jnp.array([[1, 0, -1]])
  matched = jnp.array([[[1, 1, 11, 11], [0, 0, 0, 0], [0, 0, 0, 0]]], jnp.float32)
  out = rpn_losses(obj, deltas, anchors, labels, matched, batch_size_per_image=4)
  # BCE(0, 1) = log 2; BCE(log 3, 0) = log(1 + 3) = log 4; normaliser 4 * 1 image
  np.testing.assert_allclose(float(out["loss_rpn_cls"]), (math.log(2) + math.log(4)) / 4, rtol=1e-5)
  # weights (1, 1, 1, 1): deltas (0.1, 0.1, 0, 0) -> L1 0.2
  np.testing.assert_allclose(float(out["loss_rpn_loc"]), 0.2 / 4, rtol=1e-5)
  g = jax.grad(
      lambda d: sum(rpn_losses(obj, d, anchors, labels, matched, batch_size_per_image=4).values())
  )(deltas)
  assert np.all(np.isfinite(np.asarray(g)))


def test_text_logits_zero_region_has_finite_gradient():
  """A padded RoI can embed to exactly zero; its cosine must not poison the gradient with NaN."""
  import jax
  import jax.numpy as jnp
  from regionclip_jax.detection.classifier import text_logits

  feats = jnp.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
  emb = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  logits = text_logits(feats, emb)
  assert jnp.allclose(logits[1, :2], jnp.array([1 / 3, 2 / 3]) / 0.01, rtol=1e-5)
  assert jnp.all(logits[0] == 0)
  g = jax.grad(lambda f: jnp.sum(text_logits(f, emb) * jnp.arange(3.0)))(feats)
  assert bool(jnp.all(jnp.isfinite(g)))
  assert bool(jnp.any(g[1] != 0))
