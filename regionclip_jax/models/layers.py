"""Building blocks shared by the CLIP towers: frozen BN, fp32 LayerNorm, attention, transformer.

Parameter names mirror OpenAI's `model.py` so that state dicts convert by renaming only
(see `convert_openai.py`). `dtype` is the compute dtype; parameters are always `param_dtype`
(float32 by default), so bf16 compute keeps fp32 master weights.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# He init (fan_out) for every conv: the towers have frozen identity BN when trained from
# scratch, so the init has to keep activations in range on its own.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics and affine, y = (x - mean) / sqrt(var + eps) * scale + bias.

  All four arrays live in `params` (one tree for users, converters and checkpoints) and pass
  through `stop_gradient`, so they never train even if an optimiser forgets to mask them.
  x: [..., C] -> [..., C].
  """

  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    mean = self.param("mean", nn.initializers.zeros, (c,), self.param_dtype)
    var = self.param("var", nn.initializers.ones, (c,), self.param_dtype)
    scale, bias, mean, var = jax.lax.stop_gradient((scale, bias, mean, var))
    # Folding into one multiply-add in fp32 keeps bf16 compute from losing the small eps.
    mult = scale.astype(jnp.float32) * jax.lax.rsqrt(var.astype(jnp.float32) + self.eps)
    shift = bias.astype(jnp.float32) - mean.astype(jnp.float32) * mult
    return x * mult.astype(self.dtype) + shift.astype(self.dtype)


_NHWC = ("NHWC", "HWIO", "NHWC")
CONV_KERNEL_GRADS = ("auto", "xla", "per_sample")


def _conv_nhwc(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_per_sample_kernel_grad(x, kernel, strides, padding):
  return _conv_nhwc(x, kernel, strides, padding)


def _conv_fwd(x, kernel, strides, padding):
  return _conv_nhwc(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, res, g):
  x, kernel = res
  dx = jax.vjp(lambda a: _conv_nhwc(a, kernel, strides, padding), x)[1](g)[0]

  def kernel_grad(i):
    conv_i = lambda k: _conv_nhwc(x[i : i + 1], k, strides, padding)  # noqa: E731
    return jax.vjp(conv_i, kernel)[1](g[i : i + 1])[0]

  dk = kernel_grad(0)
  for i in range(1, x.shape[0]):
    dk = dk + kernel_grad(i)
  return dx, dk


_conv_per_sample_kernel_grad.defvjp(_conv_fwd, _conv_bwd)


def _resolve_kernel_grad(where: str, kernel_grad: str, x) -> str:
  """Checks `kernel_grad` and resolves "auto": "per_sample" for float32 on the CPU backend, "xla"
  otherwise (GPU / TPU libraries do the whole-batch kernel gradient well, and bf16 partial sums
  would round)."""
  if kernel_grad not in CONV_KERNEL_GRADS:
    raise ValueError(
        f"{where}: kernel_grad must be one of {CONV_KERNEL_GRADS}, got {kernel_grad!r}"
    )
  if kernel_grad != "auto":
    return kernel_grad
  return "per_sample" if jax.default_backend() == "cpu" and x.dtype == jnp.float32 else "xla"


def conv2d(x, kernel, strides=(1, 1), padding="SAME", kernel_grad: str = "xla"):
  """NHWC / HWIO convolution, the same `lax.conv_general_dilated` call as `nn.Conv` (no bias).

  Outputs and the input gradient are those of autodiff bit for bit; `kernel_grad` picks how the
  kernel gradient is computed:
    "xla": autodiff's, one convolution whose window is the whole feature map;
    "per_sample": summed over per-sample kernel gradients (sample 0 first). XLA CPU runs that
      window convolution several times slower once feature maps get large (RN50 layer2 / layer3
      entries: 3-4x at batch 4); per sample it stays fast. The sum order differs from "xla", so
      the kernel gradient moves by float rounding (~1e-6 relative); identical at batch 1;
    "auto": "per_sample" for float32 on the CPU backend, "xla" otherwise (GPU / TPU convolution
      libraries do the whole-batch kernel gradient well, and bf16 partial sums would round).
  x: [N, H, W, Cin], kernel: [kh, kw, Cin, Cout] -> [N, H', W', Cout].
  """
  kernel_grad = _resolve_kernel_grad("conv2d", kernel_grad, x)
  strides = tuple(strides)
  padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
  if kernel_grad == "xla" or x.shape[0] == 1:
    return _conv_nhwc(x, kernel, strides, padding)
  return _conv_per_sample_kernel_grad(x, kernel, strides, padding)


class Conv(nn.Module):
  """Bias-free NHWC convolution with `nn.Conv`'s parameter ("kernel" [kh, kw, Cin, Cout]) and
  outputs; `kernel_grad` as in `conv2d`. x: [N, H, W, Cin] -> [N, H', W', Cout]."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Any = "SAME"
  kernel_grad: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = conv_init

  @nn.compact
  def __call__(self, x):
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    return conv2d(x, kernel, self.strides, self.padding, self.kernel_grad)


def _dense_last(x, kernel):
  return jnp.einsum("...c,cd->...d", x, kernel)


@jax.custom_vjp
def _dense_last_flat_kernel_grad(x, kernel):
  return _dense_last(x, kernel)


def _dense_last_fwd(x, kernel):
  return _dense_last(x, kernel), (x, kernel)


def _dense_last_bwd(res, g):
  x, kernel = res
  dx = jax.vjp(lambda a: _dense_last(a, kernel), x)[1](g)[0]
  # One [P, Cin]^T [P, Cout] matmul: autodiff's kernel gradient contracts the 4-D arrays over
  # (N, H, W), for which XLA CPU first copies a transposed cotangent (fused with the recomputed
  # BN / ReLU chain), ~30% of the RN50 trunk's backward.
  dk = jnp.matmul(x.reshape(-1, x.shape[-1]).T, g.reshape(-1, g.shape[-1]))
  return dx, dk.astype(kernel.dtype)


_dense_last_flat_kernel_grad.defvjp(_dense_last_fwd, _dense_last_bwd)


def conv1x1(x, kernel, kernel_grad: str = "xla"):
  """1x1 convolution (no bias) as a matmul over the last axis; `kernel_grad` as in `conv2d`.

  Outputs and the input gradient are autodiff's bit for bit; the kernel gradient is
    "xla": autodiff's (a dot_general contracting every leading axis);
    "per_sample": one flat [P, Cin]^T [P, Cout] matmul (P = all leading positions), the same
      sum in another order, so it moves by float rounding;
    "auto": "per_sample" for float32 on the CPU backend, "xla" otherwise.
  x: [..., Cin], kernel: [Cin, Cout] -> [..., Cout].
  """
  if _resolve_kernel_grad("conv1x1", kernel_grad, x) == "xla" or x.ndim == 2:
    return _dense_last(x, kernel)
  return _dense_last_flat_kernel_grad(x, kernel)


class Conv1x1(nn.Module):
  """1x1 convolution (no bias) written as a matmul; kernel [1, 1, Cin, Cout] exactly as `nn.Conv`.

  On CPU XLA's convolution backward (kernel gradient) is far slower than a dot: this makes the
  RN50 res4 trunk forward + backward ~30% faster (docs/findings.md, "CPU speed against PyTorch").
  `kernel_grad` as in `conv1x1` ("per_sample" / "auto" on CPU: a flat kernel-gradient matmul).
  x: [..., Cin] -> [..., Cout].
  """

  features: int
  kernel_grad: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = conv_init

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
        "kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype
    )
    return conv1x1(x.astype(self.dtype), kernel[0, 0].astype(self.dtype), self.kernel_grad)


class LayerNorm(nn.Module):
  """LayerNorm computed in float32 whatever the input dtype (as OpenAI's fp16 subclass); eps 1e-5."""

  eps: float = 1e-5
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


def attention(q, k, v, num_heads: int, mask=None):
  """Scaled dot-product attention, softmax in float32.

  q: [B, Lq, W], k / v: [B, Lk, W], mask: additive-free boolean [Lq, Lk] (True = attend)
  -> [B, Lq, W].
  """
  b, lq, w = q.shape
  lk = k.shape[1]
  if w % num_heads:
    raise ValueError(f"attention: width {w} is not divisible by num_heads {num_heads}")
  hd = w // num_heads
  q = q.reshape(b, lq, num_heads, hd)
  k = k.reshape(b, lk, num_heads, hd)
  v = v.reshape(b, lk, num_heads, hd)
  # Scaling q before the product matches torch's multi_head_attention_forward ordering.
  q = q * jnp.asarray(hd**-0.5, q.dtype)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  if mask is not None:
    logits = jnp.where(mask[None, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
  return out.reshape(b, lq, w)


class MultiheadAttention(nn.Module):
  """Self-attention with OpenAI's fused input projection (`in_proj` [W, 3W]) and `out_proj`."""

  num_heads: int
  proj_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    w = x.shape[-1]
    qkv = nn.Dense(
        3 * w,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.initializers.normal(w**-0.5),
        name="in_proj",
    )(x)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    out = attention(q, k, v, self.num_heads, mask)
    return nn.Dense(
        w,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.initializers.normal(self.proj_std),
        name="out_proj",
    )(out)


class MLP(nn.Module):
  """c_fc (4W) -> QuickGELU -> c_proj."""

  proj_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = x.shape[-1]
    h = nn.Dense(
        4 * w,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.initializers.normal((2 * w) ** -0.5),
        name="c_fc",
    )(x)
    h = quick_gelu(h)
    return nn.Dense(
        w,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.initializers.normal(self.proj_std),
        name="c_proj",
    )(h)


class ResidualAttentionBlock(nn.Module):
  """Pre-LN transformer block: x + attn(ln_1(x)); x + mlp(ln_2(x)).  x: [B, L, W]."""

  num_heads: int
  proj_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    kw = {"proj_std": self.proj_std, "dtype": self.dtype, "param_dtype": self.param_dtype}
    h = LayerNorm(param_dtype=self.param_dtype, name="ln_1")(x)
    x = x + MultiheadAttention(self.num_heads, name="attn", **kw)(h, mask)
    h = LayerNorm(param_dtype=self.param_dtype, name="ln_2")(x)
    return x + MLP(name="mlp", **kw)(h)


class _ResBlocks(nn.Module):
  """Container so the param paths read `resblocks/<i>/...` like OpenAI's `resblocks.<i>.`."""

  layers: int
  num_heads: int
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    block_cls = nn.remat(ResidualAttentionBlock) if self.remat else ResidualAttentionBlock
    # OpenAI's init: residual output projections scaled down with depth.
    proj_std = x.shape[-1] ** -0.5 * (2 * self.layers) ** -0.5
    for i in range(self.layers):
      x = block_cls(
          self.num_heads, proj_std, dtype=self.dtype, param_dtype=self.param_dtype, name=str(i)
      )(x, mask)
    return x


class Transformer(nn.Module):
  """Stack of `layers` residual attention blocks.  x: [B, L, W] -> [B, L, W].

  `mask`: optional boolean [L, L] (True = may attend), e.g. causal for the text tower.
  `remat`: rematerialise each block in the backward pass (memory for compute).
  """

  layers: int
  num_heads: int
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    return _ResBlocks(
        self.layers,
        self.num_heads,
        self.remat,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="resblocks",
    )(x.astype(self.dtype), mask)


def interpolate_pos_grid(pos, grid_hw: tuple[int, int]):
  """Bicubically resize a square positional-embedding grid.

  pos: [s*s, C] -> [gh*gw, C]. Uses `jax.image.resize(method="bicubic")` (Keys a=-0.5, half-pixel
  centres, no antialiasing), which differs slightly from torch's bicubic (a=-0.75). Only called when the feature
  grid differs from the native one; the official RegionCLIP path never interpolates.
  """
  s = round(pos.shape[0] ** 0.5)
  if s * s != pos.shape[0]:
    raise ValueError(f"interpolate_pos_grid: {pos.shape[0]} positions are not a square grid")
  gh, gw = grid_hw
  if (gh, gw) == (s, s):
    return pos
  grid = pos.reshape(s, s, pos.shape[-1]).astype(jnp.float32)
  # antialias off: a plain cubic resample, as torch's F.interpolate(mode="bicubic") does.
  grid = jax.image.resize(grid, (gh, gw, pos.shape[-1]), method="bicubic", antialias=False)
  return grid.reshape(gh * gw, pos.shape[-1]).astype(pos.dtype)
