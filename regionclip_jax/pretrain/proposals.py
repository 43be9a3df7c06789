"""Region proposals for pretraining, as a config choice (static shapes: [N, R, 4] + valid [N, R]).

Official ("rpn", `rpn_proposal_fn`): a frozen class-agnostic RPN trained on base boxes, post-NMS
top 300 at NMS 0.5, then 100 random per image. Without one, "boxes_jitter" (shapes world) stands
in for it: jittered copies of ALL objects' boxes (an RPN trained on base boxes proposes novel
objects too, since objectness transfers) plus random boxes (the RPN's background and part
proposals). "random" uses random boxes only (the official GRID/RANDOM crop types' spirit).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from regionclip_jax.detection.export import load_rpn
from regionclip_jax.detection.inference import rpn_proposals
from regionclip_jax.detection.settings import RPNSettings

ProposalFn = Callable[[jax.Array, dict], tuple[jax.Array, jax.Array]]


def random_boxes(
    key: jax.Array,
    n: int,
    r: int,
    image_hw: jax.Array,
    min_frac: float = 0.15,
    max_frac: float = 0.8,
) -> jax.Array:
  """[n, r, 4] boxes with sides uniform in [min_frac, max_frac] of the valid image size,
  placed uniformly inside it. image_hw: [n, 2] (h, w) valid size."""
  k1, k2 = jax.random.split(key)
  hw = image_hw.astype(jnp.float32)[:, None, ::-1]  # [n, 1, 2] as (w, h)
  size = jax.random.uniform(k1, (n, r, 2), minval=min_frac, maxval=max_frac) * hw
  origin = jax.random.uniform(k2, (n, r, 2)) * (hw - size)
  return jnp.concatenate([origin, origin + size], axis=-1)


def jitter_boxes(
    key: jax.Array, boxes: jax.Array, image_hw: jax.Array, copies: int, scale: float = 0.15
) -> jax.Array:
  """boxes [n, k, 4] -> [n, k * copies, 4]: centre shifted and sides rescaled by N(0, scale)
  relative to the box size, clipped to the image. Copy 0 is the box itself."""
  n, k = boxes.shape[:2]
  ctr = (boxes[..., :2] + boxes[..., 2:]) / 2
  wh = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 1.0)
  noise = jax.random.normal(key, (n, k, copies, 4)) * scale
  noise = noise.at[:, :, 0].set(0.0)
  c = ctr[:, :, None] + noise[..., :2] * wh[:, :, None]
  s = wh[:, :, None] * jnp.exp(noise[..., 2:])
  out = jnp.concatenate([c - s / 2, c + s / 2], axis=-1).reshape(n, k * copies, 4)
  hw = image_hw.astype(jnp.float32)[:, None, ::-1]
  lo = jnp.zeros_like(hw)
  return jnp.concatenate([jnp.clip(out[..., :2], lo, hw), jnp.clip(out[..., 2:], lo, hw)], -1)


def rpn_proposal_fn(
    rpn_path: str,
    *,
    post_nms_topk: int = 300,
    nms_thresh: float = 0.5,
    num_sampled: int = 100,
    pre_nms_topk: int = 6000,
) -> ProposalFn:
  """Proposals from the frozen offline RPN at `rpn_path` (an RPN workdir or its export): official
  post-NMS top 300 at NMS 0.5, then `num_sampled` drawn at random among the valid ones per image.

  -> `fn(key, batch) -> (boxes [N, num_sampled, 4], valid [N, num_sampled])`, the `rpn_fn` of
  `make_proposal_fn(kind="rpn")`. Traceable (use inside jit).
  """
  rpn, gen, variables = load_rpn(rpn_path)
  settings = RPNSettings(nms_thresh=nms_thresh)

  def fn(key, batch):
    images = batch["image"]
    n, h, w = images.shape[:3]
    hw = batch.get("image_size")
    hw = jnp.broadcast_to(jnp.asarray([h, w], jnp.float32), (n, 2)) if hw is None else hw
    boxes, _, valid = rpn_proposals(
        rpn, gen, settings, variables, images, hw.astype(jnp.float32), pre_nms_topk, post_nms_topk
    )
    # random subset of the valid proposals: top-k of random keys, invalid ones ranked last
    r = jax.random.uniform(key, valid.shape)
    _, idx = jax.lax.top_k(jnp.where(valid, r, -1.0), num_sampled)
    take = lambda a, i: a[i]
    return jax.vmap(take)(boxes, idx), jax.vmap(take)(valid, idx)

  return fn


def make_proposal_fn(
    kind: str,
    num_proposals: int,
    *,
    jitter_copies: int = 2,
    jitter_scale: float = 0.15,
    min_frac: float = 0.15,
    max_frac: float = 0.8,
    rpn_fn: ProposalFn | None = None,
) -> ProposalFn:
  """-> fn(key, batch) -> (boxes [N, R, 4], valid [N, R]) with R = num_proposals.

  batch keys used: `image` [N, H, W, 3], `image_size` [N, 2] (optional), and for
  "boxes_jitter" `boxes` [N, K, 4] + `box_mask` [N, K] (K * jitter_copies <= R; the slots
  of padded GT boxes are filled with random boxes, so all R proposals are valid).
  """
  if kind not in ("boxes_jitter", "random", "rpn"):
    raise ValueError(
        f"pretrain.proposals.kind must be 'boxes_jitter', 'random' or 'rpn', got {kind!r}"
    )
  if kind == "rpn" and rpn_fn is None:
    raise ValueError(
        "pretrain.proposals.kind='rpn' needs a frozen base-class RPN (rpn_fn); " "none was given"
    )

  def fn(key, batch):
    images = batch["image"]
    n, h, w = images.shape[:3]
    hw = batch.get("image_size")
    hw = jnp.broadcast_to(jnp.asarray([h, w]), (n, 2)) if hw is None else hw
    if kind == "rpn":
      return rpn_fn(key, batch)
    k_rand, k_jit = jax.random.split(key)
    if kind == "random":
      return random_boxes(k_rand, n, num_proposals, hw, min_frac, max_frac), jnp.ones(
          (n, num_proposals), bool
      )
    gt, gt_ok = batch["boxes"], batch["box_mask"]
    k = gt.shape[1] * jitter_copies
    if k > num_proposals:
      raise ValueError(
          f"pretrain.proposals: {gt.shape[1]} boxes x {jitter_copies} copies exceed "
          f"num_proposals={num_proposals}"
      )
    jit = jitter_boxes(k_jit, gt, hw, jitter_copies, jitter_scale)
    ok = jnp.repeat(gt_ok, jitter_copies, axis=1)
    rand = random_boxes(k_rand, n, num_proposals, hw, min_frac, max_frac)
    # slots of padded GT boxes get random boxes, so every image has R valid proposals
    boxes = jnp.concatenate([jnp.where(ok[..., None], jit, rand[:, :k]), rand[:, k:]], axis=1)
    return boxes, jnp.ones((n, num_proposals), bool)

  return fn
