"""The official offline RPNs (`rpn_coco_48.pth`, `rpn_lvis_866.pth`, `rpn_lvis_866_lsj.pth`) as a
frozen Flax RPN that the rest of the package uses like its own (`export.load_rpn`).

Official: RegionCLIP's `CLIPFastRCNN` / `PretrainFastRCNN` (`detectron2/modeling/meta_arch/
clip_rcnn.py`) build `offline_backbone` + `offline_proposal_generator` from
`MODEL.CLIP.OFFLINE_RPN_CONFIG`, a plain detectron2 Mask R-CNN config:

- `rpn_coco_48.pth`: `configs/COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x_ovd_FSD.yaml`
  (Base-RCNN-C4): MSRA R-50 to res4 (stride 16, FrozenBN, stem + res2 frozen), one RPN level,
  anchors 32..512 x 0.5 / 1 / 2 (15 per cell); test pre / post NMS top-k 6000 / 1000.
- `rpn_lvis_866.pth`: `configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml`
  (Base-RCNN-FPN): R-50 res2..res5 + FPN P2..P6 (no norm, LastLevelMaxPool), one anchor size per
  level (32..512), 3 ratios; test pre-NMS top-k 1000 per level, post 1000.
- `rpn_lvis_866_lsj.pth`: the same FPN config with `OFFLINE_RPN_LSJ_PRETRAINED`, which sets
  `RESNETS.NORM` and `FPN.NORM` to "SyncBN" (`FREEZE_AT` 0) and `RPN.CONV_DIMS` [-1, -1]: a norm
  after every backbone conv and after each FPN conv (which then has no bias), and two 3x3 conv +
  ReLU layers in the RPN head. In eval mode SyncBN is the same affine map as FrozenBN.

All three: `StandardRPNHead` (3x3 conv(s) + ReLU, 1x1 objectness, 1x1 deltas), anchor offset 0,
`Box2BoxTransform` weights (1, 1, 1, 1), NMS 0.7, min size 0, and detectron2's input: BGR 0-255,
PIXEL_MEAN [103.530, 116.280, 123.675], PIXEL_STD [1, 1, 1] (`offline_preprocess_image`, which
flips RGB inputs to the offline BGR and subtracts the offline config's mean; the checkpoint's own
`pixel_mean` / `pixel_std`, where an old detectron2 saved them, are not loaded by the official code
and not here). The pretraining / zero-shot configs override NMS (0.5 / 0.9) through their own
`rpn.nms_thresh`.

`DetectronRPN.__call__(images [N,H,W,3]) -> (objectness list of [N,hl,wl,A], deltas list of
[N,hl,wl,A,4])`, `RPNModel`'s contract, so `inference.rpn_proposals` / `find_top_rpn_proposals`
decode it unchanged. `images` are what every other module here gets: RGB, CLIP-normalised, zero
where padded; they are mapped back to detectron2's pixel space inside, and padding stays zero, as
detectron2's `ImageList` pads after normalising.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.detection.fpn import upsample_nearest_to
from regionclip_jax.models.checkpoints.detectron2 import detectron2_key
from regionclip_jax.models.clip_model import CLIP_MEAN, CLIP_STD
from regionclip_jax.models.layers import FrozenBatchNorm
from regionclip_jax.models.msra_resnet import STAGES, MSRAResNet
from regionclip_jax.ops.anchors import DefaultAnchorGenerator

Dtype = Any

BACKBONE_KIND = "detectron2"  # model.json "backbone" of a converted offline RPN
D2_PIXEL_MEAN = (103.530, 116.280, 123.675)  # detectron2 defaults (MODEL.PIXEL_MEAN), BGR
D2_PIXEL_STD = (1.0, 1.0, 1.0)
C4_ANCHOR_SIZES = ((32, 64, 128, 256, 512),)
FPN_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
C4_STRIDES = (16,)
FPN_STRIDES = (4, 8, 16, 32, 64)
# test-time proposal settings of the two RPN configs (RPN.PRE_NMS_TOPK_TEST is per level)
TEST_SETTINGS = {
    "c4": {"pre_nms_topk_test": 6000, "post_nms_topk_test": 1000, "nms_thresh": 0.7},
    "fpn": {"pre_nms_topk_test": 1000, "post_nms_topk_test": 1000, "nms_thresh": 0.7},
}


def to_detectron2_pixels(
    images: jax.Array,
    pixel_mean: Sequence[float] = D2_PIXEL_MEAN,
    pixel_std: Sequence[float] = D2_PIXEL_STD,
    input_format: str = "BGR",
) -> jax.Array:
  """CLIP-normalised RGB [N,H,W,3] (zero = padding) -> detectron2 input [N,H,W,3] in the
  checkpoint config's format ((x * 255 in `input_format`) - mean) / std, zero where padded.

  A padded pixel is exactly 0 in all three channels; a real one never is (that needs a pixel equal
  to CLIP's mean x 255, which is not an integer), so the padding is recovered without sizes."""
  images = images.astype(jnp.float32)
  pad = jnp.all(images == 0, axis=-1, keepdims=True)
  rgb = (images * jnp.asarray(CLIP_STD) + jnp.asarray(CLIP_MEAN)) * 255.0
  x = rgb[..., ::-1] if input_format == "BGR" else rgb
  x = (x - jnp.asarray(pixel_mean, jnp.float32)) / jnp.asarray(pixel_std, jnp.float32)
  return jnp.where(pad, 0.0, x)


class ConvMaybeNorm(nn.Module):
  """detectron2 `Conv2d` of the FPN: with `norm`, conv without bias + frozen norm; else conv +
  bias. x [N,H,W,C] -> [N,H,W,features]."""

  features: int
  kernel: int
  norm: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.kernel // 2
    x = nn.Conv(
        self.features,
        (self.kernel, self.kernel),
        padding=((p, p), (p, p)),
        use_bias=not self.norm,
        dtype=self.dtype,
        name="conv",
    )(x)
    return FrozenBatchNorm(dtype=self.dtype, name="norm")(x) if self.norm else x


class DetectronFPN(nn.Module):
  """detectron2 FPN, sum fusion, LastLevelMaxPool, optional norm ("SyncBN" in the LSJ RPN).

  {"res2": [N,H/4,W/4,C2], .., "res5"} -> [P2 [N,H/4,W/4,F], .., P5, P6 [N,H/64,W/64,F]].
  """

  out_channels: int = 256
  norm: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, feats: dict) -> list:
    outs, prev = {}, None
    for lvl in (5, 4, 3, 2):
      lat = ConvMaybeNorm(self.out_channels, 1, self.norm, self.dtype, name=f"fpn_lateral{lvl}")(
          feats[f"res{lvl}"]
      )
      if prev is not None:
        # F.interpolate(scale_factor=2, "nearest"); sizes match when H, W divide by 32
        lat = lat + upsample_nearest_to(prev, lat.shape[1:3])
      prev = lat
      outs[lvl] = ConvMaybeNorm(
          self.out_channels, 3, self.norm, self.dtype, name=f"fpn_output{lvl}"
      )(lat)
    # LastLevelMaxPool: max_pool2d(kernel 1, stride 2) of P5 is a strided subsample
    return [outs[2], outs[3], outs[4], outs[5], outs[5][:, ::2, ::2]]


class DetectronRPNHead(nn.Module):
  """`StandardRPNHead` with `num_convs` 3x3 conv + ReLU layers (CONV_DIMS [-1] * num_convs),
  shared over levels: list of [N,Hl,Wl,C] -> (list of [N,Hl,Wl,A], list of [N,Hl,Wl,A,4]);
  deltas' channels are (anchor, coord), as detectron2's view(N, A, 4, H, W)."""

  num_anchors: int
  num_convs: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]):
    c = features[0].shape[-1]
    init = nn.initializers.normal(0.01)
    names = ["conv"] if self.num_convs == 1 else [f"conv{i}" for i in range(self.num_convs)]
    convs = [
        nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), kernel_init=init, dtype=self.dtype, name=n)
        for n in names
    ]
    obj = nn.Conv(self.num_anchors, (1, 1), kernel_init=init, name="objectness_logits")
    dlt = nn.Conv(self.num_anchors * 4, (1, 1), kernel_init=init, name="anchor_deltas")
    logits, deltas = [], []
    for f in features:
      t = f
      for conv in convs:
        t = nn.relu(conv(t))
      n, h, w, _ = f.shape
      # the 1x1 predictors run in float32: logits rank proposals, deltas become pixels
      t = t.astype(jnp.float32)
      logits.append(obj(t))
      deltas.append(dlt(t).reshape(n, h, w, self.num_anchors, 4))
    return logits, deltas


class DetectronRPN(nn.Module):
  """An official offline RPN: detectron2 ResNet (+ FPN) + `StandardRPNHead` (module docstring).

  `arch` "c4" (res4, one level) or "fpn" (P2..P6). `images` [N,H,W,3] CLIP-normalised RGB.
  """

  arch: str = "c4"
  num_anchors: int = 15
  blocks_per_stage: Sequence[int] = (3, 4, 6, 3)
  stride_in_1x1: bool = True
  fpn_norm: bool = False
  fpn_channels: int = 256
  rpn_convs: int = 1
  pixel_mean: Sequence[float] = D2_PIXEL_MEAN
  pixel_std: Sequence[float] = D2_PIXEL_STD
  input_format: str = "BGR"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array):
    if self.arch not in ("c4", "fpn"):
      raise ValueError(f"{__name__}: arch must be 'c4' or 'fpn', got {self.arch!r}")
    x = to_detectron2_pixels(images, self.pixel_mean, self.pixel_std, self.input_format)
    out = ("res4",) if self.arch == "c4" else STAGES
    feats = MSRAResNet(
        tuple(self.blocks_per_stage),
        out,
        self.stride_in_1x1,
        dtype=self.dtype,
        name="backbone",
    )(x)
    if self.arch == "c4":
      levels = [feats["res4"]]
    else:
      levels = DetectronFPN(self.fpn_channels, self.fpn_norm, self.dtype, name="fpn")(feats)
    return DetectronRPNHead(self.num_anchors, self.rpn_convs, self.dtype, name="rpn_head")(levels)


def anchor_generator(arch: str) -> DefaultAnchorGenerator:
  """The RPN config's anchors: C4 one level of 15, FPN one size per level P2..P6."""
  if arch == "c4":
    return DefaultAnchorGenerator(C4_ANCHOR_SIZES, (ASPECT_RATIOS,), C4_STRIDES)
  return DefaultAnchorGenerator(FPN_ANCHOR_SIZES, (ASPECT_RATIOS,), FPN_STRIDES)


def build_from_meta(meta: dict, dtype: Dtype = jnp.float32):
  """model.json of a converted offline RPN -> (DetectronRPN, DefaultAnchorGenerator)."""
  arch = meta["arch"]
  gen = DefaultAnchorGenerator(
      tuple(tuple(s) for s in meta["anchor_sizes"]),
      (tuple(meta["aspect_ratios"]),),
      tuple(meta["strides"]),
  )
  rpn = DetectronRPN(
      arch=arch,
      num_anchors=gen.num_anchors[0],
      blocks_per_stage=tuple(meta["blocks_per_stage"]),
      stride_in_1x1=meta.get("stride_in_1x1", True),
      fpn_norm=meta.get("fpn_norm", False),
      fpn_channels=meta.get("fpn_channels", 256),
      rpn_convs=meta.get("rpn_convs", 1),
      pixel_mean=tuple(meta.get("pixel_mean", D2_PIXEL_MEAN)),
      pixel_std=tuple(meta.get("pixel_std", D2_PIXEL_STD)),
      input_format=meta.get("input_format", "BGR"),
      dtype=dtype,
  )
  return rpn, gen


def meta_for(spec: dict, where: str) -> dict:
  """The model.json of a converted offline RPN from `checkpoints.detectron2` `spec` (of the file
  `where`, whose base name is kept as provenance)."""
  arch = spec["arch"]
  gen = anchor_generator(arch)
  if spec["num_anchors"] != gen.num_anchors[0]:
    raise ValueError(
        f"{__name__}: {where}: proposal_generator.rpn_head.objectness_logits predicts "
        f"{spec['num_anchors']} anchors per cell, the {arch} RPN config has {gen.num_anchors[0]}"
    )
  return {
      "kind": "rpn",
      "backbone": BACKBONE_KIND,
      "arch": arch,
      "blocks_per_stage": list(spec["blocks_per_stage"]),
      "stride_in_1x1": True,
      "fpn_norm": bool(spec.get("fpn_norm", False)),
      "fpn_channels": int(spec.get("fpn_channels", 256)),
      "rpn_convs": int(spec["rpn_convs"]),
      "anchor_sizes": [list(s) for s in gen.sizes],
      "aspect_ratios": list(ASPECT_RATIOS),
      "strides": list(gen.strides),
      "pixel_mean": list(D2_PIXEL_MEAN),
      "pixel_std": list(D2_PIXEL_STD),
      "input_format": "BGR",
      "test": dict(TEST_SETTINGS[arch], min_box_size=0.0),
      "source": os.path.basename(where),
  }


def check_params(rpn: DetectronRPN, params: dict, where: str) -> dict:
  """Checks converted `params` against the module's own tree (every leaf present, same shape)
  -> {'params': params as float32 numpy}; a one-line ValueError names the first mismatch by its
  detectron2 key and torch shape."""
  shapes = jax.eval_shape(
      rpn.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  )["params"]

  def leaves(tree):
    return {tuple(k.key for k in p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}

  def torch_shape(shape):  # Flax kernels [kh, kw, I, O] are torch [O, I, kh, kw]
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)

  want, got = leaves(shapes), leaves(params)
  for path, leaf in want.items():
    key = detectron2_key(path, rpn.arch)
    if path not in got:
      raise ValueError(f"{__name__}: {where}: {key} is missing (want {torch_shape(leaf.shape)})")
    if tuple(got[path].shape) != tuple(leaf.shape):
      raise ValueError(
          f"{__name__}: {where}: {key} has shape {torch_shape(got[path].shape)}, the "
          f"{rpn.arch} RPN wants {torch_shape(leaf.shape)}"
      )
  extra = sorted(detectron2_key(p, rpn.arch) for p in set(got) - set(want))
  if extra:
    raise ValueError(
        f"{__name__}: {where}: weights the {rpn.arch} RPN has no place for: {extra[:3]}"
    )
  return {"params": jax.tree.map(lambda a: np.asarray(a, np.float32), params)}
