"""CLIP's attention pool with the key and value projections folded into the single query.

AttentionPool2d projects all L = h*w + 1 tokens to keys and values (2 x L x C x C multiply-adds
per RoI, about a quarter of the RN50 region head) although only the mean token queries. Per head,
    q_h . (x_t Wk_h + bk_h) = x_t . (Wk_h q_h) + const,      sum_t p_t (x_t Wv_h + bv_h) = (sum_t p_t x_t) Wv_h + bv_h
so the keys become one C-vector per head (the constant drops out of the softmax) and the values
one weighted sum of the tokens per head: 2 x H x L x C instead of 2 x L x C x C. Same function
up to rounding, same parameter tree (q_proj, k_proj, v_proj, c_proj, positional_embedding).

`patched()` swaps it into `models.resnet` while a step is traced (benchmark variant
`attnpool_folded`); `check()` compares it with the original on random weights.
"""

from __future__ import annotations

import contextlib
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

resnet = importlib.import_module("regionclip_jax.models.resnet")


class _Proj(nn.Module):
  """The kernel [C, out] and bias of an nn.Dense, under the Dense's own parameter names."""

  features: int
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, c: int):
    k = self.param("kernel", nn.initializers.normal(c**-0.5), (c, self.features), self.param_dtype)
    b = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    return k, b


class FoldedAttentionPool2d(resnet.AttentionPool2d):
  """Drop-in for models.resnet.AttentionPool2d: x [N, H, W, C] -> [N, output_dim]."""

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    heads, dt, f32 = self.num_heads, self.dtype, jnp.float32
    hd = c // heads
    pos = self.param(
        "positional_embedding",
        nn.initializers.normal(c**-0.5),
        (self.spacial_dim**2 + 1, c),
        self.param_dtype,
    )
    tokens = x.reshape(n, h * w, c).astype(dt)
    mean = jnp.mean(tokens.astype(f32), axis=1, keepdims=True).astype(dt)
    tokens = jnp.concatenate([mean, tokens], axis=1)
    pos = jnp.concatenate([pos[:1], resnet.interpolate_pos_grid(pos[1:], (h, w))], axis=0)
    tokens = tokens + pos.astype(dt)[None]
    proj = {"param_dtype": self.param_dtype}
    wq, bq = _Proj(c, name="q_proj", **proj)(c)
    wk, _ = _Proj(c, name="k_proj", **proj)(c)  # k's bias adds a per-head constant: no effect
    wv, bv = _Proj(c, name="v_proj", **proj)(c)
    q = tokens[:, 0] @ wq.astype(dt) + bq.astype(dt)  # [N, C]
    q = (q * jnp.asarray(hd**-0.5, dt)).reshape(n, heads, hd)
    u = jnp.einsum("nhd,chd->nhc", q, wk.astype(dt).reshape(c, heads, hd))  # keys folded
    logits = jnp.einsum("nhc,nlc->nhl", u, tokens, preferred_element_type=f32)
    probs = jax.nn.softmax(logits, axis=-1).astype(dt)
    z = jnp.einsum("nhl,nlc->nhc", probs, tokens)  # per-head weighted token
    out = jnp.einsum("nhc,chd->nhd", z, wv.astype(dt).reshape(c, heads, hd)).reshape(n, c)
    out = out + bv.astype(dt)
    return nn.Dense(self.output_dim, name="c_proj", dtype=dt, param_dtype=self.param_dtype)(out)


@contextlib.contextmanager
def patched(enabled: bool = True):
  orig = resnet.AttentionPool2d
  if enabled:
    resnet.AttentionPool2d = FoldedAttentionPool2d
  try:
    yield
  finally:
    resnet.AttentionPool2d = orig


def check(c: int = 64, heads: int = 4, grid: int = 3, seed: int = 0) -> float:
  """Max |folded - original| (float32, random weights and inputs, non-zero biases)."""
  x = jax.random.normal(jax.random.PRNGKey(seed), (5, grid, grid, c))
  orig = resnet.AttentionPool2d(grid, heads, 32)
  params = orig.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + 0.1 * np.random.default_rng(2).normal(size=p.shape), params)
  a = orig.apply(params, x)
  b = FoldedAttentionPool2d(grid, heads, 32).apply(params, x)
  return float(jnp.max(jnp.abs(a - b)))


if __name__ == "__main__":
  print(f"folded attnpool vs original: max |diff| {check():.2e}")
