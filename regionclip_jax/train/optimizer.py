"""Optimiser factory: detectron2-style SGD with warmup + multi-step decay, per-tensor clipping,
and a trainable mask (frozen parameters get no gradient, no optimiser state, no update)."""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

PyTree = Any


def warmup_multistep_schedule(
    base_lr: float,
    warmup_steps: int,
    warmup_factor: float,
    decay_steps: Sequence[int],
    decay_factor: float = 0.1,
) -> Callable[[jax.Array], jax.Array]:
  """detectron2 `WarmupMultiStepLR` with linear warmup.

  lr(t) = base_lr * decay_factor ** #{s in decay_steps: s <= t} * w(t), with
  w(t) = warmup_factor * (1 - t / warmup_steps) + t / warmup_steps for t < warmup_steps, else 1.
  """
  steps = jnp.asarray(sorted(decay_steps), jnp.int32) if decay_steps else None

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    lr = jnp.asarray(base_lr, jnp.float32)
    if steps is not None:
      lr = lr * decay_factor ** jnp.sum(jnp.asarray(count) >= steps).astype(jnp.float32)
    if warmup_steps > 0:
      alpha = t / warmup_steps
      w = jnp.where(t < warmup_steps, warmup_factor * (1 - alpha) + alpha, 1.0)
      lr = lr * w
    return lr

  return schedule


def clip_by_norm_per_tensor(max_norm: float) -> optax.GradientTransformation:
  """Clip every gradient tensor to L2 norm <= max_norm on its own (detectron2 CLIP_TYPE "norm",
  as torch's `clip_grad_norm_` per parameter: scale = max_norm / (norm + 1e-6) when below 1)."""

  def update_fn(updates, state, params=None):
    del params

    def clip(g):
      norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
      scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
      return (g * scale).astype(g.dtype)

    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def path_strings(tree: PyTree) -> PyTree:
  """Same-structure tree whose leaves are the '/'-joined key paths."""
  flat = traverse_util.flatten_dict(_as_dict(tree), sep="/")
  return traverse_util.unflatten_dict({k: k for k in flat}, sep="/")


def _as_dict(tree):
  return tree.unfreeze() if hasattr(tree, "unfreeze") else dict(tree)


def trainable_mask(
    params: PyTree, trainable: Sequence[str] = (".*",), frozen: Sequence[str] = ()
) -> PyTree:
  """Bool tree: a leaf trains iff its path matches some `trainable` regex (re.search) and no
  `frozen` regex. Raises if a `trainable` pattern matches nothing (a typo would silently freeze)."""
  flat = traverse_util.flatten_dict(_as_dict(params), sep="/")
  for pat in trainable:
    if not any(re.search(pat, k) for k in flat):
      raise ValueError(f"trainable pattern {pat!r} matches no parameter; e.g. {sorted(flat)[:5]}")
  out = {
      k: any(re.search(p, k) for p in trainable) and not any(re.search(p, k) for p in frozen)
      for k in flat
  }
  return traverse_util.unflatten_dict(out, sep="/")


def sgd(
    learning_rate,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    clip_norm: float | None = 5.0,
    clip_type: str = "per_tensor",
    nesterov: bool = False,
) -> optax.GradientTransformation:
  """torch.optim.SGD as detectron2 builds it: clip, + wd * param, momentum buffer, * -lr.

  clip_type: "per_tensor" (official) or "global" (optax.clip_by_global_norm).
  """
  parts = []
  if clip_norm:
    if clip_type == "per_tensor":
      parts.append(clip_by_norm_per_tensor(clip_norm))
    elif clip_type == "global":
      parts.append(optax.clip_by_global_norm(clip_norm))
    else:
      raise ValueError(f"optimizer.clip_type must be 'per_tensor' or 'global', got {clip_type!r}")
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  if momentum:
    parts.append(optax.trace(decay=momentum, nesterov=nesterov))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def make_optimizer(name: str, learning_rate, **kw) -> optax.GradientTransformation:
  """'sgd' (official) or 'adamw' (used for the small CLIP-teacher stage)."""
  if name == "sgd":
    return sgd(learning_rate, **kw)
  if name == "adamw":
    clip_norm = kw.pop("clip_norm", None)
    kw.pop("clip_type", None)
    kw.pop("momentum", None)
    tx = optax.adamw(learning_rate, weight_decay=kw.pop("weight_decay", 0.0), **kw)
    return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx
  raise ValueError(f"optimizer.name must be 'sgd' or 'adamw', got {name!r}")


def select(tree: PyTree, mask: PyTree) -> PyTree:
  """Keep leaves where mask is True, None elsewhere (None leaves are empty subtrees to jax)."""
  return jax.tree.map(lambda x, m: x if m else None, tree, mask)


def merge(trainable: PyTree, full: PyTree, mask: PyTree) -> PyTree:
  """Put the trainable leaves back into the full tree (frozen leaves are taken from `full`)."""
  return jax.tree.map(
      lambda m, t, f: t if m else f, mask, trainable, full, is_leaf=lambda x: x is None
  )
