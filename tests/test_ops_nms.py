"""NMS against numpy ports of torchvision's CPU nms kernel and detectron2's soft-NMS."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionclip_jax.ops.nms import batched_nms, nms, soft_nms

F32 = np.float32


def ref_nms(boxes, scores, thr):
  """torchvision nms_kernel.cpp: sort by score (ties by index), sweep, suppress IoU > thr."""
  boxes = boxes.astype(F32)
  x1, y1, x2, y2 = boxes.T
  areas = (x2 - x1) * (y2 - y1)
  order = np.argsort(-scores, kind="stable")
  suppressed = np.zeros(len(scores), bool)
  keep = []
  for a, i in enumerate(order):
    if suppressed[i]:
      continue
    keep.append(int(i))
    rest = order[a + 1 :]
    w = np.maximum(F32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
    h = np.maximum(F32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
      ovr = inter / (areas[i] + areas[rest] - inter)
    suppressed[rest[ovr > thr]] = True
  return keep


def ref_batched_nms(boxes, scores, classes, thr):
  keep = []
  for c in np.unique(classes):
    sel = np.nonzero(classes == c)[0]
    keep += [int(sel[k]) for k in ref_nms(boxes[sel], scores[sel], thr)]
  return sorted(keep, key=lambda i: (-scores[i], i))


def ref_soft_nms(boxes, scores, sigma, thr):
  """detectron2 `_soft_nms` (gaussian) with detectron2's pairwise_iou, float32."""
  boxes, scores = boxes.astype(F32), scores.astype(F32).copy()
  idxs = np.arange(len(scores))
  out_i, out_s = [], []
  while len(scores):
    t = int(np.argmax(scores))
    out_i.append(int(idxs[t]))
    out_s.append(float(scores[t]))
    b = boxes[t]
    w = np.maximum(F32(0), np.minimum(b[2], boxes[:, 2]) - np.maximum(b[0], boxes[:, 0]))
    h = np.maximum(F32(0), np.minimum(b[3], boxes[:, 3]) - np.maximum(b[1], boxes[:, 1]))
    inter = w * h
    union = (
        (b[2] - b[0]) * (b[3] - b[1])
        + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        - inter
    )
    with np.errstate(invalid="ignore", divide="ignore"):
      iou = np.where(inter > 0, inter / union, F32(0))
    scores = scores * np.exp(-(iou * iou) / F32(sigma))
    keep = scores > thr
    keep[t] = False
    boxes, scores, idxs = boxes[keep], scores[keep], idxs[keep]
  return out_i, out_s


def _scene(rng, n, img=100.0):
  """Clustered boxes (lots of overlap), quantised scores (lots of ties), a few degenerate boxes."""
  centers = rng.uniform(10, img - 10, size=(6, 2))
  c = centers[rng.integers(0, 6, n)] + rng.normal(0, 4, size=(n, 2))
  wh = rng.uniform(4, 30, size=(n, 2))
  boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(F32)
  boxes[:3, 2:] = boxes[:3, :2]  # zero-area boxes: IoU 0 / 0
  scores = (rng.integers(0, 20, n) / 20).astype(F32)
  return boxes, scores


def _kept(idx, ok):
  idx, ok = np.asarray(idx), np.asarray(ok)
  assert not np.any(ok[np.argmin(ok) :]) if not ok.all() else True  # valid slots come first
  return [int(i) for i in idx[ok]]


@pytest.mark.parametrize("thr", [0.3, 0.7])
def test_nms_matches_torchvision_kernel(thr):
  rng = np.random.default_rng(int(thr * 10))
  boxes, scores = _scene(rng, 300)
  ref = ref_nms(boxes, scores, thr)
  assert 10 < len(ref) < 300  # something is suppressed, something is kept
  f = jax.jit(nms, static_argnums=(2, 3))
  assert _kept(*f(boxes, scores, thr, 300)) == ref
  assert _kept(*f(boxes, scores, thr, 7)) == ref[:7]  # static size, top of the same list


def test_nms_vmap_valid_and_bad_values():
  rng = np.random.default_rng(4)
  b1, s1 = _scene(rng, 120)
  b2, s2 = _scene(rng, 120)
  valid = np.ones((2, 120), bool)
  valid[1, 60:] = False
  s2 = s2.copy()
  s2[5] = np.nan
  b1 = b1.copy()
  b1[7, 0] = np.nan
  idx, ok = jax.jit(jax.vmap(lambda b, s, v: nms(b, s, 0.5, 120, valid=v)))(
      np.stack([b1, b2]), np.stack([s1, s2]), valid
  )
  keep1 = [i for i in range(120) if i != 7]
  keep2 = [i for i in range(60) if i != 5]
  assert _kept(idx[0], ok[0]) == [keep1[k] for k in ref_nms(b1[keep1], s1[keep1], 0.5)]
  assert _kept(idx[1], ok[1]) == [keep2[k] for k in ref_nms(b2[keep2], s2[keep2], 0.5)]


def test_nms_empty_and_errors():
  idx, ok = nms(jnp.zeros((0, 4)), jnp.zeros((0,)), 0.5, 5)
  assert idx.shape == (5,) and not np.any(np.asarray(ok))
  idx, ok = nms(jnp.zeros((3, 4)), jnp.ones((3,)), 0.5, 5, valid=jnp.zeros(3, bool))
  assert not np.any(np.asarray(ok))
  with pytest.raises(ValueError, match="scores must be"):
    nms(jnp.zeros((3, 4)), jnp.ones((4,)), 0.5, 5)
  with pytest.raises(ValueError, match=r"\[N, 4\]"):
    nms(jnp.zeros((2, 3, 4)), jnp.ones((3,)), 0.5, 5)


def test_batched_nms_matches_per_class_reference():
  rng = np.random.default_rng(8)
  boxes, scores = _scene(rng, 250)
  classes = rng.integers(0, 4, 250).astype(np.int32)
  ref = ref_batched_nms(boxes, scores, classes, 0.5)
  idx, ok = jax.jit(batched_nms, static_argnums=(3, 4))(boxes, scores, classes, 0.5, 250)
  assert _kept(idx, ok) == ref
  assert len(ref) > len(ref_nms(boxes, scores, 0.5))  # classes matter here


@pytest.mark.parametrize("sigma,thr", [(0.5, 0.001), (0.3, 0.2)])
def test_soft_nms_matches_detectron2(sigma, thr):
  rng = np.random.default_rng(12)
  boxes, _ = _scene(rng, 80)
  scores = rng.uniform(0.05, 1, 80).astype(F32)
  ref_i, ref_s = ref_soft_nms(boxes, scores, sigma, thr)
  idx, new_s, ok = jax.jit(soft_nms, static_argnums=(2, 3, 4))(boxes, scores, sigma, thr, 80)
  got = _kept(idx, ok)
  assert got == ref_i[:80]
  np.testing.assert_allclose(np.asarray(new_s)[np.asarray(ok)], ref_s[:80], rtol=1e-5, atol=1e-7)
  assert np.any(np.asarray(new_s)[np.asarray(ok)] < scores[got] - 1e-3)  # scores did decay


def test_soft_nms_classes_and_padding():
  rng = np.random.default_rng(13)
  boxes, _ = _scene(rng, 40)
  scores = rng.uniform(0.05, 1, 40).astype(F32)
  classes = rng.integers(0, 3, 40)
  valid = np.arange(40) < 30
  idx, new_s, ok = soft_nms(boxes, scores, 0.5, 0.001, 50, valid, classes=classes)
  ref = {}
  for c in range(3):
    sel = np.nonzero((classes == c) & valid)[0]
    i, s = ref_soft_nms(boxes[sel], scores[sel], 0.5, 0.001)
    ref.update({int(sel[k]): v for k, v in zip(i, s)})
  got = dict(zip(_kept(idx, ok), np.asarray(new_s)[np.asarray(ok)].tolist()))
  assert set(got) == set(ref) and max(got) < 30
  np.testing.assert_allclose([got[k] for k in ref], list(ref.values()), rtol=1e-5)
