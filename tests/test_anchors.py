"""Anchors: detectron2 DefaultAnchorGenerator values and ordering, written out by hand."""

import math

import numpy as np
import pytest

from regionclip_jax.ops.anchors import DefaultAnchorGenerator, generate_cell_anchors, grid_anchors


def test_cell_anchors_hand_values():
  a = generate_cell_anchors((32,), (0.5, 1.0, 2.0))
  w05, h05 = math.sqrt(1024 / 0.5), 0.5 * math.sqrt(1024 / 0.5)
  want = np.array(
      [
          [-w05 / 2, -h05 / 2, w05 / 2, h05 / 2],
          [-16, -16, 16, 16],
          [-h05 / 2, -w05 / 2, h05 / 2, w05 / 2],
      ]
  )
  np.testing.assert_allclose(a, want, rtol=1e-6)
  # area preserved, ratio h / w as requested
  wh = a[:, 2:] - a[:, :2]
  np.testing.assert_allclose(wh[:, 0] * wh[:, 1], 1024, rtol=1e-5)
  np.testing.assert_allclose(wh[:, 1] / wh[:, 0], [0.5, 1, 2], rtol=1e-5)


def test_cell_anchor_order_is_size_major():
  a = generate_cell_anchors((16, 64), (1.0, 2.0))
  sizes = np.sqrt(np.prod(a[:, 2:] - a[:, :2], -1))
  np.testing.assert_allclose(sizes, [16, 16, 64, 64], rtol=1e-5)


def test_grid_order_y_x_anchor_and_offset():
  cell = generate_cell_anchors((8,), (1.0, 2.0))
  g = grid_anchors(cell, (2, 3), stride=16, offset=0.0).reshape(2, 3, 2, 4)
  # location (y=1, x=2), anchor 0 is centred at (32, 16)
  np.testing.assert_allclose((g[1, 2, 0, :2] + g[1, 2, 0, 2:]) / 2, [32, 16])
  np.testing.assert_allclose(g[0, 0], cell)
  g5 = grid_anchors(cell, (1, 1), stride=16, offset=0.5)
  np.testing.assert_allclose((g5[0, :2] + g5[0, 2:]) / 2, [8, 8])


def test_generator_defaults_c4_and_levels():
  gen = DefaultAnchorGenerator()
  assert gen.num_anchors == [15]
  (a,) = gen([(4, 5)])
  assert a.shape == (4 * 5 * 15, 4) and a.dtype == np.float32
  fpn = DefaultAnchorGenerator(
      sizes=((32,), (64,)), aspect_ratios=((0.5, 1.0, 2.0),), strides=(4, 8)
  )
  out = fpn([(8, 8), (4, 4)])
  assert [x.shape[0] for x in out] == [8 * 8 * 3, 4 * 4 * 3]
  with pytest.raises(ValueError, match="ops.anchors"):
    fpn([(8, 8)])
  with pytest.raises(ValueError, match="ops.anchors"):
    DefaultAnchorGenerator(sizes=((1,), (2,), (3,)), strides=(4, 8)).cell_anchors
