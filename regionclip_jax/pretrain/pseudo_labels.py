"""Teacher pseudo-labels over the concept pool (docs/design.md, "Pretraining"; the official
`get_psuedo_concept_labels`)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from regionclip_jax.pretrain.losses import TEMPERATURE, l2_normalize


class PseudoLabels(NamedTuple):
  probs: jax.Array  # [G, R, C] teacher softmax over the whole pool
  targets: jax.Array  # [G, R] int32 argmax concept
  keep: jax.Array  # [G, R] bool: max prob > threshold (fallback: every valid region)


def pseudo_concept_labels(
    teacher_regions: jax.Array,
    concept_emb: jax.Array,
    region_valid: jax.Array,
    threshold: float = 0.1,
    temperature: float = TEMPERATURE,
) -> PseudoLabels:
  """Label regions with concepts from the frozen teacher.

  p = softmax(cos(v_t, concepts) / tau); keep regions with max p > threshold. If no valid
  region of a group survives, every valid region of that group is kept (the official code does
  this per GPU batch, which is our group).

  Args:
    teacher_regions: [G, R, D] teacher region embeddings (unnormalised).
    concept_emb: [C, D] teacher concept embeddings (unnormalised 81-template means).
    region_valid: [G, R] bool, False for padded proposals.
  """
  v = l2_normalize(jax.lax.stop_gradient(teacher_regions))
  c = l2_normalize(jax.lax.stop_gradient(concept_emb))
  probs = jax.nn.softmax(jnp.einsum("grd,cd->grc", v, c) / temperature, axis=-1)
  max_p = jnp.max(probs, axis=-1)
  targets = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  keep = (max_p > threshold) & region_valid
  none_kept = ~jnp.any(keep, axis=-1, keepdims=True)
  keep = jnp.where(none_kept, region_valid, keep)
  return PseudoLabels(probs, targets, keep)
