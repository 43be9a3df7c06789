"""FPN variant of the open-vocabulary Faster R-CNN on a CLIP ResNet (the C4 detector is in heads.py).

Design choice. The C4 head (RoIAlign 14x14 on res4 -> layer4 -> attnpool) reuses CLIP's last stage
and its attention pooling per RoI, so region embeddings start in CLIP's space. With an FPN, layer4
already runs on the whole image (res5 feeds P5) and the pyramid levels have 256 channels, not res4's
16 x width, so layer4 + attnpool cannot act as the per-RoI head. As in detectron2's FPN Faster
R-CNN and RegionCLIP's own FPN configs, the RoI head is therefore:

  multi-level RoIAlign 7x7 on P2..P5 (`ops.poolers.multilevel_roi_align`, detectron2 level rule,
  canonical box 224 px at level 4) -> flatten -> FC 1024 + ReLU -> FC 1024 + ReLU
  -> `embed_proj` Linear(1024 -> D)  (region embedding, classified by `classifier.text_logits`
     against the frozen text embeddings, zero background logit, as C4)
  -> `bbox_pred` Linear(1024 -> 4), class-agnostic, init std 0.001 (regressed from the FC feature,
     as detectron2's FastRCNNOutputLayers, not from the embedding).

The FC head and projection start from scratch (no CLIP weights to load), which is why the paper's
main results use C4. The RPN sees P2..P6 (P6 = stride-2 subsampling of P5, detectron2's
`LastLevelMaxPool`), one anchor size per level (32..512) and three aspect ratios, with the same
`StandardRPNHead` shared across levels. Both modules keep the C4 call signatures,
`detector(images, boxes) -> (region_feats [N,R,D], deltas [N,R,4])` and `rpn(images) -> (objectness
list, deltas list)`, so train_lib's steps, the predictor and post-processing work unchanged.

Init: the modules' own initialisers follow detectron2 (c2_xavier_fill for FPN convs and FCs); the
builders' host-side `numpy_init` uses its generic rules instead (He fan-out for convs, fan-in normal
for dense kernels: the same variance as c2_xavier for the FCs, a larger one for the FPN convs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from regionclip_jax.detection.rpn import StandardRPNHead
from regionclip_jax.ops.anchors import DefaultAnchorGenerator
from regionclip_jax.ops.poolers import multilevel_roi_align

Dtype = Any

IN_FEATURES = ("res2", "res3", "res4", "res5")
ROI_LEVELS = ("p2", "p3", "p4", "p5")
RPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
ROI_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
RPN_STRIDES = (4, 8, 16, 32, 64)

# Official FREEZE_AT 2 (stem + res2 frozen); attnpool is not part of the FPN model.
TRAINABLE_FPN_DETECTOR = (
    r"backbone/visual/layer[234]/",
    r"(^|/)fpn/",
    r"(^|/)box_head/",
    r"(^|/)embed_proj/",
    r"(^|/)bbox_pred/",
)
TRAINABLE_FPN_RPN = (r"backbone/visual/layer[234]/", r"(^|/)fpn/", r"(^|/)rpn_head/")

# detectron2's c2_xavier_fill: kaiming_uniform(a=1) = uniform with variance 1 / fan_in
c2_xavier = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def upsample_nearest_to(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """x [N,h,w,C] -> [N,H,W,C] with source index floor(i / 2) (torch nearest, scale 2), clipped so
  that maps whose sides are not exact doubles (images not divisible by 32) still align."""
  h, w = x.shape[1:3]
  iy = jnp.minimum(jnp.arange(hw[0]) // 2, h - 1)
  ix = jnp.minimum(jnp.arange(hw[1]) // 2, w - 1)
  return x[:, iy][:, :, ix]


class FPN(nn.Module):
  """detectron2 FPN (no norm, sum fusion) + LastLevelMaxPool.

  feats {"res2": [N,H/4,W/4,C2], ..., "res5": [N,H/32,W/32,C5]} ->
  {"p2": [N,H/4,W/4,F], ..., "p5": [N,H/32,W/32,F], "p6": [N,ceil(H/64),ceil(W/64),F]}, F = out_channels.
  Lateral 1x1 convs, top-down nearest 2x upsampling added to the finer lateral, 3x3 output convs.
  """

  out_channels: int = 256
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feats: dict) -> dict:
    missing = [k for k in IN_FEATURES if k not in feats]
    if missing:
      raise ValueError(f"{__name__}: FPN needs features {IN_FEATURES}, missing {missing}")
    kw = {"dtype": self.dtype, "param_dtype": self.param_dtype, "kernel_init": c2_xavier}
    out, prev = {}, None
    for i in reversed(range(len(IN_FEATURES))):
      lvl = i + 2
      lat = nn.Conv(self.out_channels, (1, 1), name=f"fpn_lateral{lvl}", **kw)(
          feats[IN_FEATURES[i]]
      )
      if prev is not None:
        lat = lat + upsample_nearest_to(prev, lat.shape[1:3])
      prev = lat
      out[f"p{lvl}"] = nn.Conv(self.out_channels, (3, 3), padding=1, name=f"fpn_output{lvl}", **kw)(
          lat
      )
    # max_pool2d(kernel 1, stride 2) is a strided subsample
    out["p6"] = out["p5"][:, ::2, ::2]
    return {k: out[k] for k in RPN_LEVELS}


class FastRCNNFCHead(nn.Module):
  """pooled [M,S,S,C] -> flatten -> `num_fc` x (Dense fc_dim + ReLU) -> [M, fc_dim]."""

  fc_dim: int = 1024
  num_fc: int = 2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    for i in range(self.num_fc):
      x = nn.relu(
          nn.Dense(
              self.fc_dim,
              kernel_init=c2_xavier,
              dtype=self.dtype,
              param_dtype=self.param_dtype,
              name=f"fc{i + 1}",
          )(x)
      )
    return x


class FPNFasterRCNN(nn.Module):
  """FPN detector trunk: backbone res2..res5 -> FPN -> multi-level RoIAlign (7x7) on P2..P5 ->
  2 FC -> region embedding [D] (`embed_proj`) and class-agnostic deltas (`bbox_pred`).

  `__call__(images [N,H,W,3], boxes [N,R,4] image px) -> (region_feats [N,R,D], deltas [N,R,4])`,
  the same contract as `heads.OpenVocabFasterRCNN`. `backbone`: a module with
  `image_pyramid(images) -> {"res2".."res5"}` (models.clip.CLIP with a ResNet tower).
  """

  backbone: nn.Module
  embed_dim: int
  fpn_channels: int = 256
  pooler_resolution: int = 7
  sampling_ratio: int = 0
  canonical_box_size: float = 224.0
  fc_dim: int = 1024
  roi_chunk_size: int = 64
  dtype: Dtype = jnp.float32

  def setup(self):
    self.fpn = FPN(self.fpn_channels, dtype=self.dtype)
    self.box_head = FastRCNNFCHead(self.fc_dim, dtype=self.dtype)
    self.embed_proj = nn.Dense(self.embed_dim, kernel_init=c2_xavier, dtype=self.dtype)
    self.bbox_pred = nn.Dense(4, kernel_init=nn.initializers.normal(0.001))

  def features(self, images: jax.Array) -> list:
    """images [N,H,W,3] -> [P2..P5], each [N,H/s,W/s,F] for s = 4..32."""
    p = self.fpn(self.backbone.image_pyramid(images))
    return [p[k] for k in ROI_LEVELS]

  def pool(self, features: Sequence[jax.Array], boxes: jax.Array) -> jax.Array:
    """[P2..P5], boxes [N,R,4] -> [N,R,S,S,F], each box from its detectron2 level."""
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
      raise ValueError(f"{__name__}: boxes must be [N, R, 4]; got {tuple(boxes.shape)}")
    s = self.pooler_resolution
    # float32 boxes: bf16 coordinates are off by pixels at 800 px
    return multilevel_roi_align(
        list(features),
        boxes.astype(jnp.float32),
        (s, s),
        ROI_SCALES,
        self.sampling_ratio,
        self.canonical_box_size,
        4,
        aligned=True,
        chunk_size=self.roi_chunk_size,
    )

  def region_outputs(self, features: Sequence[jax.Array], boxes: jax.Array):
    """-> (region_feats [N,R,D], deltas [N,R,4] float32)."""
    n, r = boxes.shape[:2]
    pooled = self.pool(features, boxes)
    hidden = self.box_head(pooled.reshape((n * r,) + pooled.shape[2:]))
    feats = self.embed_proj(hidden).reshape(n, r, -1)
    deltas = self.bbox_pred(hidden.astype(jnp.float32)).reshape(n, r, 4)
    return feats, deltas

  def __call__(self, images: jax.Array, boxes: jax.Array):
    return self.region_outputs(self.features(images), boxes)


class FPNRPNModel(nn.Module):
  """Class-agnostic RPN on P2..P6 with a `StandardRPNHead` shared over levels.

  `__call__(images [N,H,W,3]) -> (objectness list of [N,hl,wl,A], deltas list of [N,hl,wl,A,4])`,
  five levels, in the order of `fpn_anchor_generator`'s levels.
  """

  backbone: nn.Module
  num_anchors: int = 3
  fpn_channels: int = 256
  dtype: Dtype = jnp.float32

  def setup(self):
    self.fpn = FPN(self.fpn_channels, dtype=self.dtype)
    self.rpn_head = StandardRPNHead(self.num_anchors, name="rpn_head")

  def __call__(self, images: jax.Array):
    p = self.fpn(self.backbone.image_pyramid(images))
    return self.rpn_head([p[k] for k in RPN_LEVELS])


def fpn_anchor_generator(
    sizes: Sequence[float] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> DefaultAnchorGenerator:
  """One anchor size per level P2..P6 (strides 4..64), shared aspect ratios (detectron2 FPN RPN)."""
  if len(sizes) != len(RPN_STRIDES):
    raise ValueError(
        f"{__name__}: the FPN RPN needs {len(RPN_STRIDES)} anchor sizes (one per "
        f"level P2..P6), got {list(sizes)}"
    )
  return DefaultAnchorGenerator(
      sizes=tuple((float(s),) for s in sizes),
      aspect_ratios=(tuple(aspect_ratios),),
      strides=RPN_STRIDES,
  )
