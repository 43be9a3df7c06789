"""Faster R-CNN C4 modules on a CLIP ResNet: region features, text classifier, box regressor, RPN model.

The backbone is any Linen module with `image_res4(images [N,H,W,3]) -> [N,H/16,W/16,C4]` and
`image_region_head(roi_feats [M,S,S,C4]) -> [M,D]` (the CLIP module; see models/clip_model.py). Text
embeddings are call arguments, never parameters: they stay frozen by construction and the
vocabulary can change at test time without touching the backbone's compiled code.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from regionclip_jax.detection.classifier import text_logits  # noqa: F401  (re-export)
from regionclip_jax.detection.rpn import StandardRPNHead
from regionclip_jax.models.region_encoder import resnet_region_features


class OpenVocabFasterRCNN(nn.Module):
  """C4 detector trunk: backbone res4 -> RoIAlign (14x14, 1/16, aligned, adaptive sampling) ->
  layer4 + attnpool -> region embedding [D] and class-agnostic deltas (`bbox_pred`, init std 0.001).

  `__call__(images [N,H,W,3], boxes [N,R,4]) -> (region_feats [N,R,D], deltas [N,R,4])`.
  """

  backbone: nn.Module
  pooler_resolution: int = 14
  feature_stride: int = 16
  sampling_ratio: int = 0
  roi_chunk_size: int = 64

  def setup(self):
    self.bbox_pred = nn.Dense(4, kernel_init=nn.initializers.normal(0.001), name="bbox_pred")

  def features(self, images: jax.Array) -> jax.Array:
    return self.backbone.image_res4(images)

  def region_features(self, res4: jax.Array, boxes: jax.Array) -> jax.Array:
    """res4 [N,h,w,C], boxes [N,R,4] image px -> [N,R,D], by the pretraining's region path
    (`models.region_encoder`; docs/design.md, "Detector transfer")."""
    s = self.pooler_resolution
    # boxes stay float32 whatever the compute dtype: bf16 coordinates are off by pixels at 800 px
    return resnet_region_features(
        res4,
        boxes.astype(jnp.float32),
        self.backbone.image_region_head,
        (s, s),
        1.0 / self.feature_stride,
        sampling_ratio=self.sampling_ratio,
        aligned=True,
        chunk_size=self.roi_chunk_size,
    )

  def box_deltas(self, region_feats: jax.Array) -> jax.Array:
    return self.bbox_pred(region_feats.astype(jnp.float32))

  def __call__(self, images: jax.Array, boxes: jax.Array):
    feats = self.region_features(self.features(images), boxes)
    return feats, self.box_deltas(feats)


class RPNModel(nn.Module):
  """Class-agnostic RPN on the backbone's res4 (the offline proposal generator).

  `__call__(images [N,H,W,3]) -> (objectness list of [N,h,w,A], deltas list of [N,h,w,A,4])`;
  one level (res4) for C4.
  """

  backbone: nn.Module
  num_anchors: int = 15
  conv_dims: int = -1

  def setup(self):
    self.rpn_head = StandardRPNHead(self.num_anchors, self.conv_dims, name="rpn_head")

  def __call__(self, images: jax.Array):
    res4 = self.backbone.image_res4(images)
    return self.rpn_head([res4])
