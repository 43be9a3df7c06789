"""CLIP's ModifiedResNet (docs/design.md, "CLIP towers") with the res4 trunk and the layer4 +
attnpool head separable.

The region path (RegionCLIP) runs `res4` on the whole image, RoIAligns on it, then feeds each
RoI through `head` (layer4 + attnpool). Images are NHWC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from regionclip_jax.models.layers import (
    Conv,
    Conv1x1,
    FrozenBatchNorm,
    attention,
    conv_init,
    interpolate_pos_grid,
)

Dtype = Any


def _avg_pool(x, k: int):
  """torch AvgPool2d(k) (kernel = stride = k, no padding, floor) on [N, H, W, C].

  Written as crop + reshape + mean: on CPU its backward is a broadcast, ~17% faster for the
  RN50 trunk forward + backward than `reduce_window` (docs/findings.md, "CPU speed against PyTorch").
  """
  if k == 1:
    return x
  n, h, w, c = x.shape
  h2, w2 = h // k, w // k
  x = x[:, : h2 * k, : w2 * k]
  return x.reshape(n, h2, k, w2, k, c).mean(axis=(2, 4), dtype=jnp.float32).astype(x.dtype)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> avgpool(stride) -> 1x1 (x4), with an avgpool + 1x1 downsample branch.

  x: [N, H, W, Cin] -> [N, H/stride, W/stride, 4 * planes].
  """

  planes: int
  stride: int = 1
  conv_kernel_grad: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = {
        "kernel_grad": self.conv_kernel_grad,
        "dtype": self.dtype,
        "param_dtype": self.param_dtype,
        "kernel_init": conv_init,
    }
    bn = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    c1 = {"kernel_grad": self.conv_kernel_grad, **bn}
    out_ch = self.planes * 4
    out = nn.relu(FrozenBatchNorm(name="bn1", **bn)(Conv1x1(self.planes, name="conv1", **c1)(x)))
    out = Conv(self.planes, (3, 3), padding=((1, 1), (1, 1)), name="conv2", **kw)(out)
    out = nn.relu(FrozenBatchNorm(name="bn2", **bn)(out))
    out = _avg_pool(out, self.stride)
    out = FrozenBatchNorm(name="bn3", **bn)(Conv1x1(out_ch, name="conv3", **c1)(out))
    identity = x
    if self.stride > 1 or x.shape[-1] != out_ch:
      identity = _avg_pool(x, self.stride)
      identity = Conv1x1(out_ch, name="downsample_conv", **c1)(identity)
      identity = FrozenBatchNorm(name="downsample_bn", **bn)(identity)
    return nn.relu(out + identity)


class ResLayer(nn.Module):
  """`blocks` bottlenecks, the first with `stride`; children named "0", "1", ... like OpenAI."""

  planes: int
  blocks: int
  stride: int = 1
  remat: bool = False
  conv_kernel_grad: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    block_cls = nn.remat(Bottleneck) if self.remat else Bottleneck
    for i in range(self.blocks):
      x = block_cls(
          self.planes,
          self.stride if i == 0 else 1,
          self.conv_kernel_grad,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=str(i),
      )(x)
    return x


class _DenseParams(nn.Module):
  """`nn.Dense`'s parameters (kernel [Cin, Cout], bias [Cout], same names and init) returned
  unapplied, for projections that are folded into other products."""

  features: int
  kernel_init: Any
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, cin: int):
    kernel = self.param("kernel", self.kernel_init, (cin, self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    return kernel, bias


class AttentionPool2d(nn.Module):
  """Mean token + learned positional embedding -> one multi-head query (token 0) -> c_proj.

  x: [N, H, W, C] -> [N, output_dim]. The positional embedding is for a `spacial_dim`^2 grid;
  other grids get it bicubically interpolated (see `layers.interpolate_pos_grid`).

  `fold_kv`: only token 0 queries, so the key and value projections can be folded into it
  instead of being applied to all L = H W + 1 tokens: per head h, q_h . (t Wk_h + bk_h) =
  (Wk_h q_h) . t + const (the constant drops out of the softmax) and sum_l p_l (t_l Wv_h + bv_h)
  = (sum_l p_l t_l) Wv_h + bv_h (the p_l sum to 1). That is 2 C^2 instead of 2 L C^2 multiplies a
  query (50x fewer on RN50's 7 x 7 grid, per image or per region); outputs equal OpenAI's to
  float rounding. False: OpenAI's form, keys and values of every token.
  """

  spacial_dim: int
  num_heads: int
  output_dim: int
  fold_kv: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    pos = self.param(
        "positional_embedding",
        nn.initializers.normal(c**-0.5),
        (self.spacial_dim**2 + 1, c),
        self.param_dtype,
    )
    tokens = x.reshape(n, h * w, c).astype(self.dtype)
    mean = jnp.mean(tokens.astype(jnp.float32), axis=1, keepdims=True).astype(self.dtype)
    tokens = jnp.concatenate([mean, tokens], axis=1)
    pos = jnp.concatenate([pos[:1], interpolate_pos_grid(pos[1:], (h, w))], axis=0)
    tokens = tokens + pos.astype(self.dtype)[None]  # [N, L, C]
    proj_init = nn.initializers.normal(c**-0.5)
    dense = {"dtype": self.dtype, "param_dtype": self.param_dtype, "kernel_init": proj_init}
    if not self.fold_kv:
      q = nn.Dense(c, name="q_proj", **dense)(tokens[:, :1])
      k = nn.Dense(c, name="k_proj", **dense)(tokens)
      v = nn.Dense(c, name="v_proj", **dense)(tokens)
      out = attention(q, k, v, self.num_heads)
      out = nn.Dense(self.output_dim, name="c_proj", **dense)(out)
      return out[:, 0]
    heads = self.num_heads
    if c % heads:
      raise ValueError(f"AttentionPool2d: width {c} is not divisible by num_heads {heads}")
    hd = c // heads
    q = nn.Dense(c, name="q_proj", **dense)(tokens[:, 0])
    # Scaling q before the product matches torch's multi_head_attention_forward ordering.
    q = q.reshape(n, heads, hd) * jnp.asarray(hd**-0.5, self.dtype)
    wk, _ = _DenseParams(c, proj_init, self.param_dtype, name="k_proj")(c)
    wv, bv = _DenseParams(c, proj_init, self.param_dtype, name="v_proj")(c)
    wk = wk.astype(self.dtype).reshape(c, heads, hd)
    wv = wv.astype(self.dtype).reshape(c, heads, hd)
    q_in = jnp.einsum("nhd,chd->nhc", q, wk)  # [N, heads, C]: each head's query in token space
    logits = jnp.einsum("nhc,nlc->nhl", q_in, tokens, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    pooled = jnp.einsum("nhl,nlc->nhc", probs, tokens)  # [N, heads, C]
    out = jnp.einsum("nhc,chd->nhd", pooled, wv) + bv.astype(self.dtype).reshape(heads, hd)
    return nn.Dense(self.output_dim, name="c_proj", **dense)(out.reshape(n, c))


class ModifiedResNet(nn.Module):
  """CLIP ResNet. `layers`: blocks per stage; `width`: stem width (64 for RN50).

  Methods: `res4(x [N,H,W,3]) -> [N, H/16, W/16, 16*width]`,
  `head(f [M, S, S, 16*width]) -> [M, output_dim]` (layer4 + attnpool),
  `__call__(x) -> [N, output_dim]` = head(res4(x)).
  `freeze_at`: 0 none, 1 stem, 2 stem + layer1 get `stop_gradient` on their output (saves the
  backward pass through them; the official transfer freezes at 2). `remat`: per-block remat.
  `conv_kernel_grad`: how the convolutions' kernel gradients are computed (`layers.conv2d`,
  `layers.conv1x1`; "auto": on CPU float32 per sample for 3x3 and one flat matmul for 1x1, XLA's
  own elsewhere). `fold_attention_pool`: `AttentionPool2d.fold_kv`.
  """

  layers: Sequence[int]
  width: int
  heads: int
  output_dim: int
  image_size: int
  fold_attention_pool: bool = True
  freeze_at: int = 0
  remat: bool = False
  conv_kernel_grad: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = {
        "kernel_grad": self.conv_kernel_grad,
        "dtype": self.dtype,
        "param_dtype": self.param_dtype,
        "kernel_init": conv_init,
    }
    bn = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    w = self.width
    self.conv1 = Conv(w // 2, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), **kw)
    self.bn1 = FrozenBatchNorm(**bn)
    self.conv2 = Conv(w // 2, (3, 3), padding=((1, 1), (1, 1)), **kw)
    self.bn2 = FrozenBatchNorm(**bn)
    self.conv3 = Conv(w, (3, 3), padding=((1, 1), (1, 1)), **kw)
    self.bn3 = FrozenBatchNorm(**bn)
    lk = {
        "remat": self.remat,
        "conv_kernel_grad": self.conv_kernel_grad,
        "dtype": self.dtype,
        "param_dtype": self.param_dtype,
    }
    self.layer1 = ResLayer(w, self.layers[0], 1, **lk)
    self.layer2 = ResLayer(w * 2, self.layers[1], 2, **lk)
    self.layer3 = ResLayer(w * 4, self.layers[2], 2, **lk)
    self.layer4 = ResLayer(w * 8, self.layers[3], 2, **lk)
    self.attnpool = AttentionPool2d(
        self.image_size // 32,
        self.heads,
        self.output_dim,
        fold_kv=self.fold_attention_pool,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )

  def stem(self, x):
    x = x.astype(self.dtype)
    x = nn.relu(self.bn1(self.conv1(x)))
    x = nn.relu(self.bn2(self.conv2(x)))
    x = nn.relu(self.bn3(self.conv3(x)))
    return _avg_pool(x, 2)

  def res4(self, x):
    x = self.stem(x)
    if self.freeze_at >= 1:
      x = jax.lax.stop_gradient(x)
    x = self.layer1(x)
    if self.freeze_at >= 2:
      x = jax.lax.stop_gradient(x)
    return self.layer3(self.layer2(x))

  def head(self, x):
    return self.attnpool(self.layer4(x.astype(self.dtype)))

  def pyramid(self, x):
    """x [N,H,W,3] -> {"res2": [N,H/4,W/4,4w], "res3": /8 8w, "res4": /16 16w, "res5": /32 32w}
    (w = width), the stage outputs an FPN consumes; `freeze_at` as in `res4`, attnpool unused."""
    x = self.stem(x)
    if self.freeze_at >= 1:
      x = jax.lax.stop_gradient(x)
    res2 = self.layer1(x)
    if self.freeze_at >= 2:
      res2 = jax.lax.stop_gradient(res2)
    res3 = self.layer2(res2)
    res4 = self.layer3(res3)
    return {"res2": res2, "res3": res3, "res4": res4, "res5": self.layer4(res4)}

  def __call__(self, x):
    return self.head(self.res4(x))
