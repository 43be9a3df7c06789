"""Box geometry, Box2BoxTransform and the Matcher against numpy ports of detectron2."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionclip_jax.ops.boxes import Box2BoxTransform, box_area, clip_boxes, pairwise_iou
from regionclip_jax.ops.matcher import Matcher


def _rand_boxes(rng, n, img=50.0):
  xy = rng.uniform(-10, img, size=(n, 2))
  wh = rng.uniform(0, 30, size=(n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def ref_iou(a, b):
  a, b = a.astype(np.float64), b.astype(np.float64)
  out = np.zeros((len(a), len(b)))
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      inter = w * h
      union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
      out[i, j] = inter / union if inter > 0 else 0.0
  return out


def test_pairwise_iou_area_clip():
  rng = np.random.default_rng(0)
  a, b = _rand_boxes(rng, 9), _rand_boxes(rng, 13)
  a[0] = [5, 5, 5, 9]  # zero width: IoU 0, not NaN
  np.testing.assert_allclose(np.asarray(jax.jit(pairwise_iou)(a, b)), ref_iou(a, b), atol=1e-6)
  assert np.isclose(float(pairwise_iou(b[:1], b[:1])[0, 0]), 1.0)
  g = jax.grad(lambda x: pairwise_iou(x, b).sum())(jnp.asarray(a))
  assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(np.asarray(box_area(a)), (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))
  c = np.asarray(clip_boxes(a, 30.0, 40.0))
  assert c[:, [0, 2]].min() >= 0 and c[:, [0, 2]].max() <= 40 and c[:, [1, 3]].max() <= 30
  # per-image sizes broadcast: [N, R, 4] with [N, 1]
  cb = np.asarray(
      clip_boxes(np.stack([a, a]), jnp.array([[10.0], [30.0]]), jnp.array([[20.0], [40.0]]))
  )
  assert cb[0, :, [0, 2]].max() <= 20 and np.allclose(cb[1], c)
  with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
    box_area(jnp.zeros((3, 5)))


def test_box2box_roundtrip_and_reference():
  rng = np.random.default_rng(1)
  src, tgt = _rand_boxes(rng, 20) + [0, 0, 1, 1], _rand_boxes(rng, 20) + [0, 0, 1, 1]
  t = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
  d = np.asarray(t.get_deltas(src, tgt))
  sw, sh = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
  tw, th = tgt[:, 2] - tgt[:, 0], tgt[:, 3] - tgt[:, 1]
  ref = np.stack(
      [
          10 * ((tgt[:, 0] + tw / 2) - (src[:, 0] + sw / 2)) / sw,
          10 * ((tgt[:, 1] + th / 2) - (src[:, 1] + sh / 2)) / sh,
          5 * np.log(tw / sw),
          5 * np.log(th / sh),
      ],
      1,
  )
  np.testing.assert_allclose(d, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(t.apply_deltas(d, src)), tgt, rtol=1e-5, atol=1e-3)
  # class-specific deltas [N, 4k] and the scale clamp at log(1000 / 16)
  big = np.tile(np.array([[0, 0, 100.0, 100.0]], np.float32), (20, 2))
  out = np.asarray(t.apply_deltas(big, src))
  assert out.shape == (20, 8)
  np.testing.assert_allclose(out[:, 2] - out[:, 0], sw * 1000 / 16, rtol=1e-5)
  assert math.isclose(t.scale_clamp, math.log(1000 / 16))
  with pytest.raises(ValueError, match="multiple of 4"):
    t.apply_deltas(np.zeros((3, 5)), src[:3])


def ref_matcher(iou, thresholds, labels, low_quality):
  """detectron2 Matcher.__call__ on an unpadded [G, P] matrix."""
  g, p = iou.shape
  if g == 0:
    return np.zeros(p, int), np.full(p, labels[0])
  vals, matches = iou.max(0), iou.argmax(0)
  out = np.ones(p, int)
  th = [-np.inf] + list(thresholds) + [np.inf]
  for l, lo, hi in zip(labels, th[:-1], th[1:]):
    out[(vals >= lo) & (vals < hi)] = l
  if low_quality:
    best = iou.max(1)
    _, preds = np.nonzero(iou == best[:, None])
    out[preds] = 1
  return matches, out


@pytest.mark.parametrize("low_quality", [False, True])
def test_matcher_matches_detectron2_with_padding(low_quality):
  rng = np.random.default_rng(2 + low_quality)
  gt = _rand_boxes(rng, 5)
  near = np.tile(gt, (2, 1)) + rng.normal(0, 1.5, size=(10, 4)).astype(np.float32)
  preds = np.concatenate([_rand_boxes(rng, 50), near])
  iou = ref_iou(gt, preds).astype(np.float32)
  iou[1, 7] = iou[1].max()  # a tie for gt 1's best prediction
  m = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=low_quality)
  ref_idx, ref_lab = ref_matcher(iou, [0.3, 0.7], [0, -1, 1], low_quality)
  # pad with 3 bogus ground truths that must be ignored
  pad = np.concatenate([iou, np.full((3, 60), 0.99, np.float32)])
  gt_valid = np.arange(8) < 5
  idx, lab = jax.jit(m)(pad, gt_valid)
  np.testing.assert_array_equal(np.asarray(idx), ref_idx)
  np.testing.assert_array_equal(np.asarray(lab), ref_lab)
  assert set(ref_lab.tolist()) >= {0, 1}
  if low_quality:  # the low-quality rule actually changed something here
    assert np.any(ref_lab != ref_matcher(iou, [0.3, 0.7], [0, -1, 1], False)[1])


def test_matcher_no_gt_and_errors():
  m = Matcher([0.5], [0, 1])
  idx, lab = m(jnp.zeros((0, 4)))
  assert np.all(np.asarray(lab) == 0) and np.asarray(idx).shape == (4,)
  idx, lab = m(jnp.full((2, 4), 0.9), jnp.zeros(2, bool))
  assert np.all(np.asarray(lab) == 0) and np.all(np.asarray(idx) == 0)
  with pytest.raises(ValueError, match="len\\(labels\\)"):
    Matcher([0.3, 0.7], [0, 1])
  with pytest.raises(ValueError, match="increasing"):
    Matcher([0.7, 0.3], [0, -1, 1])
