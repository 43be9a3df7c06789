"""Anchor generation (detectron2 `DefaultAnchorGenerator` semantics).

Anchors depend only on static feature shapes, so they are built with numpy at trace time and
enter jitted code as constants.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


def generate_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
  """Zero-centred anchors for one feature location -> [len(sizes) * len(aspect_ratios), 4] x1y1x2y2.

  Order is size-major (for size: for ratio), aspect ratio = h / w, area = size ** 2, as detectron2.
  """
  out = []
  for size in sizes:
    area = float(size) ** 2
    for ratio in aspect_ratios:
      if ratio <= 0:
        raise ValueError(f"{__name__}: aspect ratio must be > 0, got {ratio}")
      w = math.sqrt(area / ratio)
      h = ratio * w
      out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
  return np.asarray(out, np.float32)


def grid_anchors(
    cell_anchors: np.ndarray, feature_hw: tuple[int, int], stride: float, offset: float = 0.0
) -> np.ndarray:
  """Shift cell anchors over a feature grid -> [H * W * A, 4], ordered (y, x, anchor) like the
  flattened NHWC RPN head outputs."""
  h, w = int(feature_hw[0]), int(feature_hw[1])
  xs = np.arange(w, dtype=np.float32) * stride + offset * stride
  ys = np.arange(h, dtype=np.float32) * stride + offset * stride
  sy, sx = np.meshgrid(ys, xs, indexing="ij")
  shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)
  return (shifts + cell_anchors[None]).reshape(-1, 4).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DefaultAnchorGenerator:
  """Per-level anchors. Defaults are detectron2's C4 RPN: one level at stride 16, sizes
  32..512, aspect ratios 0.5 / 1 / 2 (15 anchors per location). A single inner tuple of sizes or
  ratios is broadcast to every level."""

  sizes: Sequence[Sequence[float]] = ((32, 64, 128, 256, 512),)
  aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),)
  strides: Sequence[float] = (16,)
  offset: float = 0.0

  def _per_level(self, seq, name):
    n = len(self.strides)
    if len(seq) == 1 and n > 1:
      return list(seq) * n
    if len(seq) != n:
      raise ValueError(f"{__name__}: {name} has {len(seq)} levels but strides has {n}")
    return list(seq)

  @property
  def cell_anchors(self) -> list[np.ndarray]:
    return [
        generate_cell_anchors(s, a)
        for s, a in zip(
            self._per_level(self.sizes, "sizes"),
            self._per_level(self.aspect_ratios, "aspect_ratios"),
        )
    ]

  @property
  def num_anchors(self) -> list[int]:
    """Anchors per spatial location, per level."""
    return [c.shape[0] for c in self.cell_anchors]

  def __call__(self, feature_shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """feature_shapes: (H, W) per level -> list of [H * W * A, 4] float32 image-pixel anchors."""
    if len(feature_shapes) != len(self.strides):
      raise ValueError(
          f"{__name__}: got {len(feature_shapes)} feature levels, generator has {len(self.strides)}"
      )
    return [
        grid_anchors(c, hw, s, self.offset)
        for c, hw, s in zip(self.cell_anchors, feature_shapes, self.strides)
    ]
