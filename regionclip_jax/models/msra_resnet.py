"""detectron2's ResNet ("MSRA" R-50 / R-101), the backbone of the official offline RPNs.

Not the CLIP ModifiedResNet of `resnet.py`: this is detectron2's `modeling/backbone/resnet.py`
with the settings of the official RPN configs (`STRIDE_IN_1X1: True`, `NUM_GROUPS: 1`,
`WIDTH_PER_GROUP: 64`, `RES2_OUT_CHANNELS: 256`, no dilation):

- stem: 7x7 conv stride 2 (no bias) + norm + ReLU, then 3x3 max pool stride 2 padding 1 (stride 4);
- stages res2..res5 of bottleneck blocks (1x1 -> 3x3 -> 1x1, 4x expansion); the first block of a
  stage strides (res3..res5: 2) and has a 1x1 projection `shortcut` (conv + norm); with
  `stride_in_1x1` the stride sits in the first 1x1 conv (MSRA / Caffe2 weights), else in the 3x3.

Norm: every conv is followed by an inference-mode batch norm. detectron2's `FrozenBN` and a
`BN` / `SyncBN` in eval mode compute the same affine map from weight / bias / running statistics
(eps 1e-5), so both load into `layers.FrozenBatchNorm`. Inputs are detectron2's: NHWC here, in
the pixel space of the checkpoint's config (BGR 0-255 minus PIXEL_MEAN, / PIXEL_STD for the
official RPNs); the caller normalises (`detection/offline_rpn.py`).

`MSRAResNet(images [N,H,W,3]) -> {name: [N, H/s, W/s, C]}` for each of `out_features`
("res2" s=4 C=256, "res3" 8 / 512, "res4" 16 / 1024, "res5" 32 / 2048); stages after the last
requested one are not built (the C4 RPN stops at res4).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from regionclip_jax.models.layers import FrozenBatchNorm

Dtype = Any

STAGES = ("res2", "res3", "res4", "res5")
# blocks per stage of detectron2's `ResNet.make_default_stages` by depth
DEPTH_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# c2_msra_fill = kaiming_normal(fan_out, relu), detectron2's init of every ResNet conv
msra_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvNorm(nn.Module):
  """detectron2 `Conv2d(..., bias=False, norm=...)`: conv then frozen norm; x [N,H,W,Ci] ->
  [N,H/stride,W/stride,features]. Torch's symmetric zero padding `padding` per side."""

  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.padding
    x = nn.Conv(
        self.features,
        (self.kernel, self.kernel),
        (self.stride, self.stride),
        padding=((p, p), (p, p)),
        use_bias=False,
        kernel_init=msra_init,
        dtype=self.dtype,
        name="conv",
    )(x)
    return FrozenBatchNorm(dtype=self.dtype, name="norm")(x)


class BottleneckBlock(nn.Module):
  """x [N,H,W,Ci] -> [N,H/stride,W/stride,out_channels]; `shortcut` projection iff Ci differs."""

  out_channels: int
  bottleneck_channels: int
  stride: int = 1
  stride_in_1x1: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    kw = {"dtype": self.dtype}
    out = nn.relu(ConvNorm(self.bottleneck_channels, 1, s1, name="conv1", **kw)(x))
    out = nn.relu(ConvNorm(self.bottleneck_channels, 3, s3, 1, name="conv2", **kw)(out))
    out = ConvNorm(self.out_channels, 1, name="conv3", **kw)(out)
    if x.shape[-1] != self.out_channels:
      x = ConvNorm(self.out_channels, 1, self.stride, name="shortcut", **kw)(x)
    return nn.relu(out + x)


class MSRAResNet(nn.Module):
  """detectron2 ResNet trunk (see the module docstring); images [N,H,W,3] -> dict of features."""

  blocks_per_stage: Sequence[int] = DEPTH_BLOCKS[50]
  out_features: Sequence[str] = ("res4",)
  stride_in_1x1: bool = True
  stem_channels: int = 64
  res2_channels: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> dict:
    unknown = [f for f in self.out_features if f not in STAGES]
    if unknown or not self.out_features:
      raise ValueError(f"{__name__}: out_features must be among {STAGES}, got {self.out_features}")
    x = images.astype(self.dtype)
    x = nn.relu(ConvNorm(self.stem_channels, 7, 2, 3, dtype=self.dtype, name="stem")(x))
    # torch max_pool2d pads with -inf, as reduce_window's init does
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    last = max(STAGES.index(f) for f in self.out_features)
    out = {}
    for i, name in enumerate(STAGES[: last + 1]):
      width = self.res2_channels * 2**i
      for b in range(self.blocks_per_stage[i]):
        x = BottleneckBlock(
            width,
            width // 4,
            stride=(1 if i == 0 else 2) if b == 0 else 1,
            stride_in_1x1=self.stride_in_1x1,
            dtype=self.dtype,
            name=f"{name}_{b}",
        )(x)
      if name in self.out_features:
        out[name] = x
    return out
