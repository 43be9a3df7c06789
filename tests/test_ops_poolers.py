"""FPN level assignment (detectron2 rule) and multi-level pooling = per-level roi_align."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionclip_jax.ops.poolers import ROIPooler, assign_boxes_to_levels
from regionclip_jax.ops.roi_align import roi_align


def ref_levels(boxes, min_level, max_level, canonical=224.0, canonical_level=4):
  out = []
  for x1, y1, x2, y2 in boxes.astype(np.float64):
    lvl = math.floor(
        canonical_level + math.log2(math.sqrt((x2 - x1) * (y2 - y1)) / canonical + 1e-8)
    )
    out.append(min(max(lvl, min_level), max_level) - min_level)
  return np.array(out)


def test_level_assignment():
  sizes = np.array([8, 30, 111, 112, 223, 224, 447, 448, 900, 2000], np.float32)
  boxes = np.stack([np.zeros_like(sizes), np.zeros_like(sizes), sizes, sizes], 1)
  got = np.asarray(assign_boxes_to_levels(boxes, 2, 5))
  np.testing.assert_array_equal(got, ref_levels(boxes, 2, 5))
  np.testing.assert_array_equal(got, [0, 0, 0, 1, 1, 2, 2, 3, 3, 3])  # 224 -> P4 (index 2)
  bad = np.array([[0, 0, np.nan, 4], [5, 5, 1, 1]], np.float32)
  np.testing.assert_array_equal(np.asarray(assign_boxes_to_levels(bad, 2, 5)), [0, 0])


def test_multilevel_pooling_equals_selected_level():
  rng = np.random.default_rng(0)
  scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
  img = 256
  feats = [
      jnp.asarray(rng.normal(size=(2, img // int(1 / s), img // int(1 / s), 3)), jnp.float32)
      for s in scales
  ]
  xy = rng.uniform(0, 200, size=(2, 12, 2))
  wh = np.exp(rng.uniform(np.log(8), np.log(400), size=(2, 12, 2)))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  pooler = ROIPooler((3, 3), scales, sampling_ratio=0, canonical_box_size=112, canonical_level=4)
  both = jax.jit(
      lambda f, b: (pooler(f, b), [roi_align(x, b, 3, s, 0, True) for x, s in zip(f, scales)])
  )
  out, per_level = both(feats, boxes)
  out = np.asarray(out)
  lvl = ref_levels(boxes.reshape(-1, 4), 2, 5, 112.0).reshape(2, 12)
  assert len(set(lvl.ravel().tolist())) >= 3  # several levels exercised
  for i, per in enumerate(per_level):
    np.testing.assert_allclose(out[lvl == i], np.asarray(per)[lvl == i], atol=1e-6)


def test_errors():
  f = [jnp.zeros((1, 8, 8, 2)), jnp.zeros((1, 4, 4, 2))]
  with pytest.raises(ValueError, match="feature maps for"):
    ROIPooler(2, (1 / 4,))(f, jnp.zeros((1, 3, 4)))
  with pytest.raises(ValueError, match="consecutive"):
    ROIPooler(2, (1 / 4, 1 / 16))
  with pytest.raises(ValueError, match="share batch and channels"):
    ROIPooler(2, (1 / 4, 1 / 8))([f[0], jnp.zeros((1, 4, 4, 3))], jnp.zeros((1, 3, 4)))
