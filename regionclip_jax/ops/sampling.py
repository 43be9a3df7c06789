"""detectron2's balanced positive / negative sampler with a static number of outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def subsample_labels(
    key, labels, num_samples: int, positive_fraction: float, bg_label: int, valid=None
):
  """Draws up to `num_samples` indices, at most `int(num_samples * positive_fraction)` positive.

  labels [P] int: -1 ignore, `bg_label` background, anything else foreground. Like detectron2's
  `subsample_labels`: num_pos = min(#fg, int(num_samples * positive_fraction)), num_neg =
  min(#bg, num_samples - num_pos), each a uniformly random subset (a random permutation prefix).
  `valid` [P] bool marks padding (treated as ignore).

  Returns (indices [num_samples] int32, valid [num_samples] bool, is_positive [num_samples] bool):
  positives fill the first num_pos slots, negatives the next num_neg, the rest are invalid with
  index 0. Deterministic for a given key; vmap over images with split keys.
  """
  labels = jnp.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{__name__}: labels must be [P], got {tuple(labels.shape)}")
  num_preds = labels.shape[0]
  if valid is not None:
    valid = jnp.asarray(valid, bool)
    if valid.shape != labels.shape:
      raise ValueError(f"{__name__}: valid must be [P] = {labels.shape}, got {tuple(valid.shape)}")
    labels = jnp.where(valid, labels, -1)
  if num_preds == 0:
    return (
        jnp.zeros((num_samples,), jnp.int32),
        jnp.zeros((num_samples,), bool),
        jnp.zeros((num_samples,), bool),
    )
  pos = (labels != -1) & (labels != bg_label)
  neg = labels == bg_label
  max_pos = int(num_samples * positive_fraction)
  num_pos = jnp.minimum(jnp.sum(pos), max_pos)
  num_neg = jnp.minimum(jnp.sum(neg), num_samples - num_pos)
  # random keys, sorted: a uniformly random order of each group (the group itself first)
  k_pos, k_neg = jax.random.split(key)
  pos_order = jnp.argsort(jnp.where(pos, jax.random.uniform(k_pos, (num_preds,)), 2.0))
  neg_order = jnp.argsort(jnp.where(neg, jax.random.uniform(k_neg, (num_preds,)), 2.0))
  slot = jnp.arange(num_samples)
  take_pos = slot < num_pos
  neg_slot = jnp.clip(slot - num_pos, 0, num_preds - 1)
  pos_slot = jnp.clip(slot, 0, num_preds - 1)
  idx = jnp.where(take_pos, pos_order[pos_slot], neg_order[neg_slot])
  ok = slot < num_pos + num_neg
  return jnp.where(ok, idx, 0).astype(jnp.int32), ok, take_pos & ok
