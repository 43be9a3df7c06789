"""CLIP VisionTransformer: conv patchify -> [class] + positions -> ln_pre -> blocks -> ln_post -> proj.

`tokens` returns the last block's output (before ln_post) split into class token and patch grid,
`project` applies ln_post + proj to any of them (dense region features, OWL-ViT style).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from regionclip_jax.models.layers import (
    LayerNorm,
    Transformer,
    conv_init,
    interpolate_pos_grid,
)

Dtype = Any


class VisionTransformer(nn.Module):
  """x: [N, H, W, 3] -> [N, output_dim]. Native grid = image_size // patch_size; other grids get
  the positional embedding bicubically interpolated."""

  image_size: int
  patch_size: int
  width: int
  layers: int
  heads: int
  output_dim: int
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    scale = self.width**-0.5
    g = self.image_size // self.patch_size
    p = self.patch_size
    self.conv1 = nn.Conv(
        self.width,
        (p, p),
        strides=(p, p),
        padding="VALID",
        use_bias=False,
        kernel_init=conv_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    self.class_embedding = self.param(
        "class_embedding", nn.initializers.normal(scale), (self.width,), self.param_dtype
    )
    self.positional_embedding = self.param(
        "positional_embedding",
        nn.initializers.normal(scale),
        (g * g + 1, self.width),
        self.param_dtype,
    )
    self.ln_pre = LayerNorm(param_dtype=self.param_dtype)
    self.transformer = Transformer(
        self.layers, self.heads, remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype
    )
    self.ln_post = LayerNorm(param_dtype=self.param_dtype)
    self.proj = self.param(
        "proj", nn.initializers.normal(scale), (self.width, self.output_dim), self.param_dtype
    )

  def tokens(self, x):
    """x: [N, H, W, 3] -> (cls [N, width], grid [N, gh, gw, width]) after the last block."""
    x = self.conv1(x.astype(self.dtype))
    n, gh, gw, w = x.shape
    x = x.reshape(n, gh * gw, w)
    cls = jnp.broadcast_to(self.class_embedding.astype(self.dtype), (n, 1, w))
    x = jnp.concatenate([cls, x], axis=1)
    pos = self.positional_embedding
    pos = jnp.concatenate([pos[:1], interpolate_pos_grid(pos[1:], (gh, gw))], axis=0)
    x = self.ln_pre(x + pos.astype(self.dtype)[None])
    x = self.transformer(x)
    return x[:, 0], x[:, 1:].reshape(n, gh, gw, w)

  def project(self, t):
    """t: [..., width] -> [..., output_dim] (ln_post + proj)."""
    return self.ln_post(t) @ self.proj.astype(self.dtype)

  def __call__(self, x):
    return self.project(self.tokens(x)[0])
