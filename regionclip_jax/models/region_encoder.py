"""Region embeddings in CLIP space from the whole image, student and teacher alike (docs/design.md,
"Region features"). The detector's C4 RoI head (`detection/heads.py`) embeds its boxes with the
same `resnet_region_features`.

ResNet (official): res4 of the whole image -> RoIAlign (1/16, aligned, adaptive sampling,
S x S with S = 2 x attnpool grid, 14 for RN50) -> layer4 (its stride-2 avgpool gives the native
attnpool grid) -> attnpool -> [D].

ViT (ours; the official code has no ViT region path): the patch-token grid after the last block
(before ln_post) is RoIAligned at stride = patch size into `vit_pool_size` x `vit_pool_size`
bins, the bins are averaged, and the result goes through ln_post + proj like the class token.
No transformer layer runs per region, so a region costs one RoIAlign and one projection; the
region is a linear readout of dense tokens that attended to the whole image (the readout of
dense-CLIP detectors). A box covering exactly one patch returns that patch token's projection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from regionclip_jax.models.clip_model import CLIP
from regionclip_jax.ops.roi_align import roi_align

PyTree = Any


def _check(images, boxes):
  if (
      images.ndim != 4
      or boxes.ndim != 3
      or boxes.shape[-1] != 4
      or boxes.shape[0] != images.shape[0]
  ):
    raise ValueError(
        f"{__name__}: need images [N, H, W, 3] and boxes [N, R, 4]; "
        f"got {tuple(images.shape)} and {tuple(boxes.shape)}"
    )


def default_pooler_resolution(module: CLIP) -> int:
  """RoIAlign output side: 2 x attnpool grid for ResNets (14 RN50, 18 RN50x4), 1 bin for ViTs."""
  v = module.config.vision
  return 2 * v.pool_grid if module.config.is_resnet else 1


def global_boxes(images: jax.Array) -> jax.Array:
  """[N, 1, 4]: one box covering the whole (padded) image, the official 'global' proposal."""
  n, h, w = images.shape[:3]
  return jnp.broadcast_to(jnp.asarray([0.0, 0.0, w, h], jnp.float32), (n, 1, 4))


def resnet_region_features(
    res4: jax.Array,
    boxes: jax.Array,
    region_head: Callable[[jax.Array], jax.Array],
    pooler_resolution: int | tuple[int, int],
    spatial_scale: float,
    *,
    sampling_ratio: int = 0,
    aligned: bool = True,
    chunk_size: int = 64,
    roi_method: str = "separable",
) -> jax.Array:
  """The ResNet region path: res4 [N, h, w, C4], boxes [N, R, 4] x1y1x2y2 image px -> [N, R, D].

  RoIAlign (`spatial_scale` = res4 / image size) to S x S bins, then `region_head` on the
  [N * R, S, S, C4] crops (`CLIP.image_region_head`: layer4 + attnpool). `region_head` is a
  callable so that both a bound Linen submodule (the detector's backbone) and `module.apply` with
  explicit params (pretraining) share this code.
  """
  n, r = boxes.shape[:2]
  rois = roi_align(
      res4,
      boxes,
      pooler_resolution,
      spatial_scale,
      sampling_ratio,
      aligned,
      chunk_size=chunk_size,
      method=roi_method,
  )
  flat = rois.reshape((n * r,) + rois.shape[2:])
  return region_head(flat).reshape(n, r, -1)


def region_features(
    module: CLIP,
    params: PyTree,
    images: jax.Array,
    boxes: jax.Array,
    *,
    pooler_resolution: int | None = None,
    sampling_ratio: int = 0,
    aligned: bool = True,
    chunk_size: int = 64,
    roi_method: str = "separable",
) -> jax.Array:
  """images [N, H, W, 3] CLIP-normalised, boxes [N, R, 4] x1y1x2y2 image px -> [N, R, D].

  `params`: the CLIP param tree (no 'params' wrapper). For ViTs `pooler_resolution` is the
  number of bins per side that are averaged (default 1).
  """
  _check(images, boxes)
  s = pooler_resolution or default_pooler_resolution(module)
  variables = {"params": params}
  if module.config.is_resnet:
    res4 = module.apply(variables, images, method=CLIP.image_res4)
    return resnet_region_features(
        res4,
        boxes,
        lambda rois: module.apply(variables, rois, method=CLIP.image_region_head),
        s,
        res4.shape[1] / images.shape[1],
        sampling_ratio=sampling_ratio,
        aligned=aligned,
        chunk_size=chunk_size,
        roi_method=roi_method,
    )
  _, grid = module.apply(variables, images, method=CLIP.image_tokens)
  scale = 1.0 / module.config.vision.patch_size
  rois = roi_align(
      grid, boxes, s, scale, sampling_ratio, aligned, chunk_size=chunk_size, method=roi_method
  )
  pooled = jnp.mean(rois.astype(jnp.float32), axis=(2, 3)).astype(grid.dtype)
  return module.apply(variables, pooled, method=CLIP.image_project)
