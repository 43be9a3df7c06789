"""Box geometry on x1y1x2y2 boxes (detectron2 semantics), jit- and vmap-able.

All functions take padded arrays; none branches on data. Boxes are `[..., 4]` (x1, y1, x2, y2)
in pixels.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp


def _check_boxes(b, name: str) -> None:
  if b.ndim < 1 or b.shape[-1] != 4:
    raise ValueError(f"{__name__}: {name} must have shape [..., 4], got {tuple(b.shape)}")


def box_area(b):
  """Area of `b` [..., 4] -> [...]. Not clamped: boxes with x2 < x1 have negative area (detectron2)."""
  b = jnp.asarray(b)
  _check_boxes(b, "boxes")
  return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def pairwise_iou(a, b):
  """IoU between every box of `a` [N, 4] and of `b` [M, 4] -> [N, M].

  detectron2 `pairwise_iou`: intersection clamped at 0, IoU defined as 0 where the intersection
  is empty (so degenerate / zero-area pairs give 0, never NaN).
  """
  a = jnp.asarray(a)
  b = jnp.asarray(b)
  _check_boxes(a, "a")
  _check_boxes(b, "b")
  if a.ndim != 2 or b.ndim != 2:
    raise ValueError(
        f"{__name__}: pairwise_iou wants a [N, 4] and b [M, 4], got "
        f"{tuple(a.shape)} and {tuple(b.shape)}; vmap for batches"
    )
  area_a = box_area(a)
  area_b = box_area(b)
  wh = jnp.minimum(a[:, None, 2:], b[None, :, 2:]) - jnp.maximum(a[:, None, :2], b[None, :, :2])
  wh = jnp.maximum(wh, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area_a[:, None] + area_b[None, :] - inter
  # the double where keeps the gradient finite where inter == 0 (union may be 0 there)
  safe_union = jnp.where(inter > 0, union, 1.0)
  return jnp.where(inter > 0, inter / safe_union, 0.0)


def clip_boxes(b, height, width):
  """Clamp `b` [..., 4] to the image: x in [0, width], y in [0, height] (detectron2 `Boxes.clip`).

  `height`, `width`: scalars or arrays broadcastable to `b[..., 0]` (e.g. per-image `[N, 1]`).
  """
  b = jnp.asarray(b)
  _check_boxes(b, "boxes")
  h = jnp.asarray(height, b.dtype)
  w = jnp.asarray(width, b.dtype)
  x1 = jnp.clip(b[..., 0], 0, w)
  y1 = jnp.clip(b[..., 1], 0, h)
  x2 = jnp.clip(b[..., 2], 0, w)
  y2 = jnp.clip(b[..., 3], 0, h)
  return jnp.stack([x1, y1, x2, y2], axis=-1)


class Box2BoxTransform:
  """detectron2's box coder: deltas (dx, dy, dw, dh) between a source and a target box.

  dx = wx * (tx - sx) / sw, dy likewise, dw = ww * log(tw / sw), dh likewise; `apply_deltas`
  clamps dw, dh at `scale_clamp` before exponentiating.
  """

  def __init__(
      self,
      weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
      scale_clamp: float = math.log(1000.0 / 16),
  ):
    if len(weights) != 4:
      raise ValueError(f"{__name__}: Box2BoxTransform weights must be 4 numbers, got {weights}")
    self.weights = tuple(float(w) for w in weights)
    self.scale_clamp = float(scale_clamp)

  def get_deltas(self, src_boxes, target_boxes):
    """`src_boxes`, `target_boxes` [..., 4] (broadcastable) -> deltas [..., 4]."""
    src = jnp.asarray(src_boxes)
    tgt = jnp.asarray(target_boxes)
    _check_boxes(src, "src_boxes")
    _check_boxes(tgt, "target_boxes")
    wx, wy, ww, wh = self.weights
    sw = src[..., 2] - src[..., 0]
    sh = src[..., 3] - src[..., 1]
    sx = src[..., 0] + 0.5 * sw
    sy = src[..., 1] + 0.5 * sh
    tw = tgt[..., 2] - tgt[..., 0]
    th = tgt[..., 3] - tgt[..., 1]
    tx = tgt[..., 0] + 0.5 * tw
    ty = tgt[..., 1] + 0.5 * th
    return jnp.stack(
        [wx * (tx - sx) / sw, wy * (ty - sy) / sh, ww * jnp.log(tw / sw), wh * jnp.log(th / sh)],
        axis=-1,
    )

  def apply_deltas(self, deltas, boxes):
    """`deltas` [..., 4k] (k boxes per row, e.g. class-specific) and `boxes` [..., 4] -> [..., 4k]."""
    deltas = jnp.asarray(deltas)
    boxes = jnp.asarray(boxes)
    _check_boxes(boxes, "boxes")
    if deltas.shape[-1] % 4:
      raise ValueError(
          f"{__name__}: deltas last dim must be a multiple of 4, got {tuple(deltas.shape)}"
      )
    dtype = jnp.promote_types(deltas.dtype, jnp.float32)
    d = deltas.astype(dtype).reshape(deltas.shape[:-1] + (-1, 4))
    boxes = boxes.astype(dtype)[..., None, :]
    wx, wy, ww, wh = self.weights
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    cx = boxes[..., 0] + 0.5 * widths
    cy = boxes[..., 1] + 0.5 * heights
    dx = d[..., 0] / wx
    dy = d[..., 1] / wy
    dw = jnp.minimum(d[..., 2] / ww, self.scale_clamp)
    dh = jnp.minimum(d[..., 3] / wh, self.scale_clamp)
    pcx = dx * widths + cx
    pcy = dy * heights + cy
    pw = jnp.exp(dw) * widths
    ph = jnp.exp(dh) * heights
    out = jnp.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], axis=-1)
    return out.reshape(deltas.shape[:-1] + (-1,))
