"""Non-maximum suppression with static output shapes (indices padded + validity mask).

Greedy NMS is computed as "repeatedly take the highest-scoring box still alive, then kill the
boxes that overlap it", which keeps exactly the set torchvision's sorted sweep keeps, in the same
order (score descending, ties by lower index). The loop runs at most `max_output` times, each step
O(N); no N x N matrix is built, so 6,000 proposals need only O(N) memory.

Boxes are [N, 4] x1y1x2y2. Entries with `valid` False, a NaN / inf score or a non-finite
coordinate never appear in the output and suppress nothing. N == 0 gives all-invalid outputs.
Use `jax.vmap` for batches.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def _prepare(boxes, scores, valid, name: str):
  boxes = jnp.asarray(boxes)
  scores = jnp.asarray(scores)
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"{__name__}: {name} boxes must be [N, 4], got {tuple(boxes.shape)}")
  if scores.shape != boxes.shape[:1]:
    raise ValueError(
        f"{__name__}: {name} scores must be [N] = {boxes.shape[:1]}, got {tuple(scores.shape)}"
    )
  ok = jnp.isfinite(scores) & jnp.all(jnp.isfinite(boxes), axis=-1)
  if valid is not None:
    valid = jnp.asarray(valid)
    if valid.shape != scores.shape:
      raise ValueError(
          f"{__name__}: {name} valid must be [N] = {scores.shape}, got {tuple(valid.shape)}"
      )
    ok = ok & valid.astype(bool)
  dtype = jnp.promote_types(boxes.dtype, jnp.float32)
  return jnp.where(ok[:, None], boxes, 0).astype(dtype), jnp.where(ok, scores, 0), ok


def _iou_with(box, boxes, areas):
  """torchvision's kernel IoU of one box [4] against boxes [N, 4] -> [N] (NaN for 0 / 0)."""
  w = jnp.maximum(jnp.minimum(box[2], boxes[:, 2]) - jnp.maximum(box[0], boxes[:, 0]), 0.0)
  h = jnp.maximum(jnp.minimum(box[3], boxes[:, 3]) - jnp.maximum(box[1], boxes[:, 1]), 0.0)
  inter = w * h
  area = (box[2] - box[0]) * (box[3] - box[1])
  return inter / (area + areas - inter)


def _greedy(boxes, scores, alive, classes, iou_threshold, max_output):
  n = boxes.shape[0]
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  keep = jnp.zeros((max_output,), jnp.int32)
  keep_ok = jnp.zeros((max_output,), bool)
  neg = jnp.asarray(-jnp.inf, scores.dtype)

  def cond(state):
    i, alive, _, _ = state
    return (i < max_output) & jnp.any(alive)

  def body(state):
    i, alive, keep, keep_ok = state
    j = jnp.argmax(jnp.where(alive, scores, neg)).astype(jnp.int32)  # first index among ties
    kill = _iou_with(boxes[j], boxes, areas) > iou_threshold
    if classes is not None:
      kill = kill & (classes == classes[j])
    alive = alive & ~kill & (jnp.arange(n) != j)
    return i + 1, alive, keep.at[i].set(j), keep_ok.at[i].set(True)

  _, _, keep, keep_ok = lax.while_loop(cond, body, (jnp.int32(0), alive, keep, keep_ok))
  return keep, keep_ok


def nms(boxes, scores, iou_threshold: float, max_output: int, valid=None):
  """Greedy NMS. boxes [N, 4], scores [N] -> (indices [max_output] int32, valid [max_output] bool).

  Kept boxes in descending score order (ties: lower index first); a box is suppressed by a kept
  one when IoU > iou_threshold (torchvision's strict test; IoU computed as its kernel does, so a
  0 / 0 IoU between degenerate boxes suppresses nothing). Padding slots hold index 0.
  """
  boxes, scores, ok = _prepare(boxes, scores, valid, "nms")
  if boxes.shape[0] == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  return _greedy(boxes, scores, ok, None, iou_threshold, max_output)


def batched_nms(boxes, scores, classes, iou_threshold: float, max_output: int, valid=None):
  """Per-class NMS: boxes suppress only boxes of their own class. Same outputs as `nms`.

  Equals torchvision's `batched_nms` (its per-class variant; the coordinate-offset variant it
  uses for large inputs can differ by float rounding) followed by the top `max_output` by score.
  """
  boxes, scores, ok = _prepare(boxes, scores, valid, "batched_nms")
  classes = jnp.asarray(classes)
  if classes.shape != scores.shape:
    raise ValueError(
        f"{__name__}: batched_nms classes must be [N] = {scores.shape}, got "
        f"{tuple(classes.shape)}"
    )
  if boxes.shape[0] == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  return _greedy(boxes, scores, ok, classes, iou_threshold, max_output)


def soft_nms(
    boxes,
    scores,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    max_output: int = 100,
    valid=None,
    *,
    classes=None,
):
  """Gaussian soft-NMS (detectron2 / RegionCLIP `_soft_nms`, method "gaussian").

  Repeatedly takes the alive box with the highest current score, records it with that score,
  multiplies every score by exp(-IoU^2 / sigma) (detectron2 IoU: 0 where boxes do not
  intersect) and drops boxes whose score is no longer > score_threshold. With `classes` [N],
  only boxes of the same class decay each other (per-class soft-NMS without coordinate offsets).

  Returns (indices [max_output] int32, new_scores [max_output], valid [max_output] bool).
  """
  boxes, scores, ok = _prepare(boxes, scores, valid, "soft_nms")
  n = boxes.shape[0]
  if classes is not None:
    classes = jnp.asarray(classes)
    if classes.shape != scores.shape:
      raise ValueError(
          f"{__name__}: soft_nms classes must be [N] = {scores.shape}, got "
          f"{tuple(classes.shape)}"
      )
  dtype = jnp.promote_types(scores.dtype, jnp.float32)
  idx = jnp.zeros((max_output,), jnp.int32)
  out_s = jnp.zeros((max_output,), dtype)
  out_ok = jnp.zeros((max_output,), bool)
  if n == 0:
    return idx, out_s, out_ok
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

  def cond(state):
    i, alive = state[:2]
    return (i < max_output) & jnp.any(alive)

  def body(state):
    i, alive, cur, idx, out_s, out_ok = state
    j = jnp.argmax(jnp.where(alive, cur, -jnp.inf)).astype(jnp.int32)
    b = boxes[j]
    w = jnp.maximum(jnp.minimum(b[2], boxes[:, 2]) - jnp.maximum(b[0], boxes[:, 0]), 0.0)
    h = jnp.maximum(jnp.minimum(b[3], boxes[:, 3]) - jnp.maximum(b[1], boxes[:, 1]), 0.0)
    inter = w * h
    union = (b[2] - b[0]) * (b[3] - b[1]) + areas - inter
    iou = jnp.where(inter > 0, inter / jnp.where(inter > 0, union, 1.0), 0.0)
    decay = jnp.exp(-(iou * iou) / sigma)
    if classes is not None:
      decay = jnp.where(classes == classes[j], decay, 1.0)
    idx, out_s, out_ok = idx.at[i].set(j), out_s.at[i].set(cur[j]), out_ok.at[i].set(True)
    cur = cur * decay
    alive = alive & (cur > score_threshold) & (jnp.arange(n) != j)
    return i + 1, alive, cur, idx, out_s, out_ok

  state = (jnp.int32(0), ok, scores.astype(dtype), idx, out_s, out_ok)
  _, _, _, idx, out_s, out_ok = lax.while_loop(cond, body, state)
  return idx, out_s, out_ok
