"""Open-vocabulary classifier: region embeddings against frozen class text embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _unit(x: jax.Array) -> jax.Array:
  """L2-normalise the last axis. The clamp sits inside the rsqrt so that an all-zero row (a padded
  RoI) gets a finite zero gradient; clamping the norm after `linalg.norm` gives 0/0 = NaN there."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def text_logits(
    region_feats: jax.Array, text_emb: jax.Array, temperature: float = 0.01
) -> jax.Array:
  """[..., D] x [K, D] -> [..., K+1]: cosine / temperature, plus a frozen zero background logit
  (official: zero background embedding, no bias) in the last column."""
  x = _unit(region_feats.astype(jnp.float32))
  t = _unit(jax.lax.stop_gradient(text_emb.astype(jnp.float32)))
  cos = x @ t.T
  bg = jnp.zeros(cos.shape[:-1] + (1,), cos.dtype)
  return jnp.concatenate([cos, bg], -1) / temperature
