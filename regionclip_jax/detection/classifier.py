"""Open-vocabulary classifier: region embeddings against frozen class text embeddings."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def text_logits(region_feats: jax.Array, text_emb: jax.Array, temperature: float = 0.01) -> jax.Array:
  """[..., D] x [K, D] -> [..., K+1]: cosine / temperature, plus a frozen zero background logit
  (official: zero background embedding, no bias) in the last column."""
  x = region_feats.astype(jnp.float32)
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  t = jax.lax.stop_gradient(text_emb.astype(jnp.float32))
  t = t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
  cos = x @ t.T
  bg = jnp.zeros(cos.shape[:-1] + (1,), cos.dtype)
  return jnp.concatenate([cos, bg], -1) / temperature
