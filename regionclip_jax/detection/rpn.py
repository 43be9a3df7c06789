"""Region proposal network (detectron2 `StandardRPNHead` + `RPN` semantics, static shapes).

The RPN is class-agnostic and trained on base-class boxes only; frozen, it is the "offline RPN"
that feeds proposals to RegionCLIP pretraining and to detector fine-tuning.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from regionclip_jax.ops.boxes import Box2BoxTransform, clip_boxes
from regionclip_jax.ops.nms import batched_nms


class StandardRPNHead(nn.Module):
  """3x3 conv + ReLU, then 1x1 objectness (A) and 1x1 deltas (4A); shared over levels.

  features: list of [N, Hl, Wl, C] -> (objectness list of [N, Hl, Wl, A],
  deltas list of [N, Hl, Wl, A, 4]); `flatten_predictions` puts them in `grid_anchors` order.
  """

  num_anchors: int
  conv_dims: int = -1  # -1: as many channels as the input, as detectron2

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]):
    init = nn.initializers.normal(0.01)
    c = features[0].shape[-1] if self.conv_dims < 0 else self.conv_dims
    conv = nn.Conv(c, (3, 3), padding=1, kernel_init=init, name="conv")
    obj = nn.Conv(self.num_anchors, (1, 1), kernel_init=init, name="objectness_logits")
    dlt = nn.Conv(self.num_anchors * 4, (1, 1), kernel_init=init, name="anchor_deltas")
    logits, deltas = [], []
    for f in features:
      n, h, w, _ = f.shape
      t = nn.relu(conv(f))
      logits.append(obj(t).astype(jnp.float32))
      # channel layout is (anchor, coord), matching detectron2's view(N, A, 4, H, W)
      deltas.append(dlt(t).astype(jnp.float32).reshape(n, h, w, self.num_anchors, 4))
    return logits, deltas


def flatten_predictions(anchor_generator, logits, deltas):
  """Per-level head outputs -> (anchors list of [Al, 4] constants, logits list of [N, Al],
  deltas list of [N, Al, 4]); Al = Hl * Wl * A in (y, x, anchor) order."""
  anchors = anchor_generator([tuple(l.shape[1:3]) for l in logits])
  flat_l = [l.reshape(l.shape[0], -1) for l in logits]
  flat_d = [d.reshape(d.shape[0], -1, 4) for d in deltas]
  return [jnp.asarray(a) for a in anchors], flat_l, flat_d


def find_top_rpn_proposals(
    anchors: Sequence[jax.Array],
    objectness: Sequence[jax.Array],
    pred_deltas: Sequence[jax.Array],
    image_sizes: jax.Array,
    *,
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float = 0.7,
    min_box_size: float = 0.0,
    box_weights=(1.0, 1.0, 1.0, 1.0),
):
  """Decode, keep top-k per level, clip, drop tiny boxes, NMS per level, keep post_nms_topk.

  anchors: list of [Al, 4]; objectness: list of [N, Al]; pred_deltas: list of [N, Al, 4];
  image_sizes [N, 2] (h, w) valid size -> (boxes [N, P, 4], logits [N, P], valid [N, P]),
  P = post_nms_topk, sorted by objectness logit, invalid rows zero boxes / -inf logits.
  """
  b2b = Box2BoxTransform(weights=tuple(box_weights), scale_clamp=math.log(1000.0 / 16))

  def one_image(obj_list, dlt_list, hw):
    boxes, scores, lvls = [], [], []
    for lvl, (anc, o, d) in enumerate(zip(anchors, obj_list, dlt_list)):
      k = min(pre_nms_topk, o.shape[0])
      top_s, top_i = jax.lax.top_k(o, k)
      boxes.append(b2b.apply_deltas(d[top_i], anc[top_i]))
      scores.append(top_s)
      lvls.append(jnp.full((k,), lvl, jnp.int32))
    boxes, scores, lvls = (jnp.concatenate(x) for x in (boxes, scores, lvls))
    boxes = clip_boxes(boxes, hw[0], hw[1])
    wh = boxes[:, 2:] - boxes[:, :2]
    ok = (
        jnp.all(jnp.isfinite(boxes), -1)
        & jnp.isfinite(scores)
        & (wh[:, 0] > min_box_size)
        & (wh[:, 1] > min_box_size)
    )
    scores = jnp.where(ok, scores, -1e9)
    keep, kvalid = batched_nms(boxes, scores, lvls, nms_thresh, post_nms_topk, valid=ok)
    out_b = jnp.where(kvalid[:, None], boxes[keep], 0.0)
    out_s = jnp.where(kvalid, scores[keep], -jnp.inf)
    return out_b, out_s, kvalid

  return jax.vmap(one_image)(list(objectness), list(pred_deltas), image_sizes)
