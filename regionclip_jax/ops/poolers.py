"""Multi-level RoI pooling for FPN features (detectron2 `ROIPooler`, ROIAlignV2 type)."""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

from regionclip_jax.ops.roi_align import roi_align


def _levels(scales: Sequence[float]) -> tuple[int, int]:
  levels = [-math.log2(s) for s in scales]
  if any(abs(l - round(l)) > 1e-6 for l in levels):
    raise ValueError(f"{__name__}: scales must be powers of 1/2, got {list(scales)}")
  levels = [int(round(l)) for l in levels]
  if levels != list(range(levels[0], levels[0] + len(levels))):
    raise ValueError(
        f"{__name__}: scales must be consecutive levels (1/4, 1/8, ...), got {list(scales)}"
    )
  return levels[0], levels[-1]


def assign_boxes_to_levels(
    boxes,
    min_level: int,
    max_level: int,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
):
  """boxes [..., 4] -> level index in [0, max_level - min_level] (int32), detectron2's rule:

  floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8)), clamped to the levels.
  Non-finite or non-positive areas go to the lowest level (their RoIAlign output is 0 or tiny).
  """
  b = jnp.asarray(boxes)
  area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  size = jnp.sqrt(jnp.where(jnp.isfinite(area) & (area > 0), area, 0.0))
  lvl = jnp.floor(canonical_level + jnp.log2(size / canonical_box_size + 1e-8))
  return (jnp.clip(lvl, min_level, max_level) - min_level).astype(jnp.int32)


def multilevel_roi_align(
    features,
    boxes,
    output_size,
    scales: Sequence[float],
    sampling_ratio: int = 0,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
    *,
    aligned: bool = True,
    chunk_size: int = 64,
    method: str = "auto",
):
  """features: list of [N, Hl, Wl, C] (finest first), boxes [N, R, 4] -> [N, R, oh, ow, C].

  Each box is pooled from the level chosen by `assign_boxes_to_levels`. Static shapes: every
  level sees every RoI slot, with the boxes of other levels replaced by NaN (zero output; with the
  separable form they cost only a tiny crop). One level = plain roi_align.
  method "auto" (default) takes the gather form with a fixed sampling_ratio on large maps and the
  separable form for adaptive sampling (see roi_align).
  """
  if len(features) != len(scales) or not features:
    raise ValueError(f"{__name__}: got {len(features)} feature maps for {len(scales)} scales")
  channels = {f.shape[-1] for f in features}
  if len(channels) != 1 or any(f.shape[0] != features[0].shape[0] for f in features):
    raise ValueError(
        f"{__name__}: feature maps must share batch and channels, got "
        f"{[tuple(f.shape) for f in features]}"
    )
  pool = lambda f, s, b: roi_align(
      f, b, output_size, s, sampling_ratio, aligned, chunk_size=chunk_size, method=method
  )
  if len(features) == 1:
    return pool(features[0], scales[0], boxes)
  min_level, max_level = _levels(scales)
  lvl = assign_boxes_to_levels(boxes, min_level, max_level, canonical_box_size, canonical_level)
  out = None
  for i, (f, s) in enumerate(zip(features, scales)):
    sel = lvl == i
    # boxes of other levels become NaN: exact zeros, and the separable form's smallest crop tier,
    # so each level costs about what its own boxes need
    pooled = pool(f, s, jnp.where(sel[..., None], boxes, jnp.nan))
    out = pooled if out is None else jnp.where(sel[..., None, None, None], pooled, out)
  return out


class ROIPooler:
  """detectron2-style pooler object: ROIPooler(output_size, scales, ...)(features, boxes)."""

  def __init__(
      self,
      output_size,
      scales: Sequence[float],
      sampling_ratio: int = 0,
      canonical_box_size: float = 224.0,
      canonical_level: int = 4,
      aligned: bool = True,
      chunk_size: int = 64,
      method: str = "auto",
  ):
    self.output_size = output_size
    self.scales = tuple(scales)
    if len(self.scales) > 1:
      self.min_level, self.max_level = _levels(self.scales)
    self.kwargs = dict(
        sampling_ratio=sampling_ratio,
        canonical_box_size=canonical_box_size,
        canonical_level=canonical_level,
        aligned=aligned,
        chunk_size=chunk_size,
        method=method,
    )

  def __call__(self, features, boxes):
    """features: list of [N, Hl, Wl, C]; boxes [N, R, 4] image px -> [N, R, oh, ow, C]."""
    return multilevel_roi_align(list(features), boxes, self.output_size, self.scales, **self.kwargs)
