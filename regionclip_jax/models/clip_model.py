"""CLIP (image + text towers) as one Linen module, its configs and presets, and host-side init.

The bottom of the CLIP stack: it imports only the tower building blocks (`layers`, `resnet`,
`vit`, `text`) and `initializers`, so the checkpoint readers and converters can import it. Users
import these names from the facade `models/clip.py` (see docs/design.md, "CLIP towers").

Parameter tree (OpenAI naming, '.' -> '/'): `visual/...`, `token_embedding/embedding`,
`positional_embedding`, `transformer/resblocks/<i>/...`, `ln_final`, `text_projection`,
`logit_scale` (log of the inverse temperature, like OpenAI). OpenAI state dicts convert to and
from it in `convert_openai.py`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.models import initializers
from regionclip_jax.models.layers import LayerNorm, Transformer
from regionclip_jax.models.resnet import ModifiedResNet
from regionclip_jax.models.text import encode_text as _encode_text
from regionclip_jax.models.vit import VisionTransformer

Dtype = Any

# Matches exactly the parameter paths of every FrozenBatchNorm (for optimiser masks).
FROZEN_BN_REGEX = r"(^|/)(bn\d+|downsample_bn)/"

MAX_LOGIT_SCALE = 100.0  # OpenAI clamps exp(logit_scale) at 100
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """ModifiedResNet: blocks per stage, stem width, attnpool heads, native input size (px), and
  whether the attention pool folds its key / value projections into the one query
  (`resnet.AttentionPool2d.fold_kv`: the same function, ~25% fewer region-head FLOPs for RN50)."""

  layers: tuple[int, int, int, int] = (3, 4, 6, 3)
  width: int = 64
  heads: int = 32
  image_size: int = 224
  fold_attention_pool: bool = True

  @property
  def res4_channels(self) -> int:
    return self.width * 16

  @property
  def res5_channels(self) -> int:
    return self.width * 32

  @property
  def pool_grid(self) -> int:
    """Attnpool's native grid side (7 for RN50 at 224 px); RoIs of 2x this side feed layer4."""
    return self.image_size // 32


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  image_size: int = 224
  patch_size: int = 32
  width: int = 768
  layers: int = 12
  heads: int = 12


@dataclasses.dataclass(frozen=True)
class TextConfig:
  context_length: int = 77
  vocab_size: int = 49408
  width: int = 512
  heads: int = 8
  layers: int = 12


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  embed_dim: int
  vision: ResNetConfig | ViTConfig
  text: TextConfig

  @property
  def is_resnet(self) -> bool:
    return isinstance(self.vision, ResNetConfig)

  @property
  def image_size(self) -> int:
    return self.vision.image_size

  def to_dict(self) -> dict:
    vision = dataclasses.asdict(self.vision)
    if "layers" in vision and isinstance(vision["layers"], tuple):
      vision["layers"] = list(vision["layers"])
    vision["kind"] = "resnet" if self.is_resnet else "vit"
    return {"embed_dim": self.embed_dim, "vision": vision, "text": dataclasses.asdict(self.text)}

  @classmethod
  def from_dict(cls, d: dict) -> CLIPConfig:
    try:
      vision = dict(d["vision"])
      kind = vision.pop("kind")
      if kind == "resnet":
        vision["layers"] = tuple(vision["layers"])
        vcfg = ResNetConfig(**vision)
      elif kind == "vit":
        vcfg = ViTConfig(**vision)
      else:
        raise ValueError(
            f"CLIPConfig.from_dict: vision.kind must be 'resnet' or 'vit', got {kind!r}"
        )
      return cls(embed_dim=int(d["embed_dim"]), vision=vcfg, text=TextConfig(**d["text"]))
    except (KeyError, TypeError) as e:
      raise ValueError(f"CLIPConfig.from_dict: malformed config dict ({e!r}): {d}") from e


def _rn(embed, layers, width, image_size, text_width):
  return CLIPConfig(
      embed,
      ResNetConfig(tuple(layers), width, width * 32 // 64, image_size),
      TextConfig(width=text_width, heads=text_width // 64),
  )


def _vit(embed, patch, width, layers, text_width, image_size=224):
  return CLIPConfig(
      embed,
      ViTConfig(image_size, patch, width, layers, width // 64),
      TextConfig(width=text_width, heads=text_width // 64),
  )


# OpenAI's published architectures; heads follow OpenAI's rule (width*32//64 for ResNets,
# width//64 for transformers) so that `config_from_state_dict` recovers them exactly.
PRESETS: dict[str, CLIPConfig] = {
    "RN50": _rn(1024, (3, 4, 6, 3), 64, 224, 512),
    "RN101": _rn(512, (3, 4, 23, 3), 64, 224, 512),
    "RN50x4": _rn(640, (4, 6, 10, 6), 80, 288, 640),
    "RN50x16": _rn(768, (6, 8, 18, 8), 96, 384, 768),
    "ViT-B/32": _vit(512, 32, 768, 12, 512),
    "ViT-B/16": _vit(512, 16, 768, 12, 512),
    "ViT-L/14": _vit(768, 14, 1024, 24, 768),
    # Tiny towers for tests and the shapes world: 64 px input, res4 4x4, attnpool grid 2x2.
    # tiny_rn keeps OpenAI's unfolded attention pool: the fold changes the rounding, and the
    # shapes world's recorded results are that rounding's (docs/findings.md, "CPU speed against
    # PyTorch": the fold moved the main command's student - teacher on seed 0 by 1.7 points).
    "tiny_rn": CLIPConfig(
        64,
        ResNetConfig((1, 1, 1, 1), 16, 8, 64, fold_attention_pool=False),
        TextConfig(width=64, heads=1, layers=2),
    ),
    "tiny_vit": CLIPConfig(
        64, ViTConfig(64, 16, 64, 2, 1), TextConfig(width=64, heads=1, layers=2)
    ),
}


def get_config(name: str) -> CLIPConfig:
  if name not in PRESETS:
    raise ValueError(f"clip.get_config: unknown preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]


def _check_images(images, who: str):
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
        f"CLIP.{who}: images must be [N, H, W, 3] (NHWC, CLIP-normalised float); "
        f"got shape {tuple(images.shape)}"
    )
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
        f"CLIP.{who}: images must be a float array already CLIP-normalised; got dtype "
        f"{images.dtype} (normalise with clip.normalize_images first)"
    )


class CLIP(nn.Module):
  """CLIP image and text towers.

  `dtype`: compute dtype (e.g. bfloat16); params are `param_dtype` (float32).
  `freeze_at`: ResNet only, stop gradients after the stem (1) or layer1 (2).
  `remat`: rematerialise blocks in the backward pass.
  `conv_kernel_grad`: ResNet only, how convolution kernel gradients are computed (`layers.conv2d`
  for 3x3, `layers.conv1x1` for 1x1).
  """

  config: CLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  freeze_at: int = 0
  remat: bool = False
  conv_kernel_grad: str = "xla"

  def setup(self):
    cfg, v, t = self.config, self.config.vision, self.config.text
    kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    if isinstance(v, ResNetConfig):
      self.visual = ModifiedResNet(
          tuple(v.layers),
          v.width,
          v.heads,
          cfg.embed_dim,
          v.image_size,
          fold_attention_pool=v.fold_attention_pool,
          freeze_at=self.freeze_at,
          remat=self.remat,
          conv_kernel_grad=self.conv_kernel_grad,
          **kw,
      )
    else:
      self.visual = VisionTransformer(
          v.image_size,
          v.patch_size,
          v.width,
          v.layers,
          v.heads,
          cfg.embed_dim,
          remat=self.remat,
          **kw,
      )
    self.token_embedding = nn.Embed(
        t.vocab_size, t.width, embedding_init=nn.initializers.normal(0.02), **kw
    )
    self.positional_embedding = self.param(
        "positional_embedding",
        nn.initializers.normal(0.01),
        (t.context_length, t.width),
        self.param_dtype,
    )
    self.transformer = Transformer(t.layers, t.heads, remat=self.remat, **kw)
    self.ln_final = LayerNorm(param_dtype=self.param_dtype)
    self.text_projection = self.param(
        "text_projection",
        nn.initializers.normal(t.width**-0.5),
        (t.width, cfg.embed_dim),
        self.param_dtype,
    )
    self.logit_scale = self.param(
        "logit_scale", nn.initializers.constant(math.log(1 / 0.07)), (), self.param_dtype
    )

  def encode_image(self, images):
    """images: [N, H, W, 3] float, CLIP-normalised -> [N, D] unnormalised."""
    _check_images(images, "encode_image")
    return self.visual(images)

  def encode_text(self, tokens):
    """tokens: [B, L] int (OpenAI ids, L <= context length) -> [B, D] unnormalised."""
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(
          f"CLIP.encode_text: tokens must be int [B, L]; got shape {tuple(tokens.shape)} "
          f"dtype {tokens.dtype}"
      )
    if tokens.shape[-1] > self.config.text.context_length:
      raise ValueError(
          f"CLIP.encode_text: {tokens.shape[-1]} tokens exceed the context length "
          f"{self.config.text.context_length}"
      )
    return _encode_text(
        tokens,
        token_embedding=self.token_embedding,
        positional_embedding=self.positional_embedding,
        transformer=self.transformer,
        ln_final=self.ln_final,
        text_projection=self.text_projection,
        dtype=self.dtype,
    )

  def __call__(self, images, tokens):
    """-> (logits_per_image [N, B], logits_per_text [B, N]) in float32, as OpenAI's forward."""
    img = self.encode_image(images).astype(jnp.float32)
    txt = self.encode_text(tokens).astype(jnp.float32)
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    logits = jnp.exp(self.logit_scale.astype(jnp.float32)) * img @ txt.T
    return logits, logits.T

  # -- region path (ResNet) --------------------------------------------------------------
  def _require(self, resnet: bool, who: str):
    if self.config.is_resnet != resnet:
      kind = "a ResNet" if resnet else "a ViT"
      raise ValueError(
          f"CLIP.{who} needs {kind} vision tower; this config has "
          f"{type(self.config.vision).__name__}"
      )

  def image_res4(self, images):
    """images: [N, H, W, 3] -> res4 features [N, H/16, W/16, 16*width]."""
    self._require(True, "image_res4")
    _check_images(images, "image_res4")
    return self.visual.res4(images)

  def image_region_head(self, roi_feats):
    """roi_feats: [M, S, S, 16*width] (S = 2 * pool grid, 14 for RN50) -> [M, D] via layer4 +
    attnpool. Other S interpolate the attnpool positional embedding bicubically."""
    self._require(True, "image_region_head")
    if roi_feats.ndim != 4 or roi_feats.shape[-1] != self.config.vision.res4_channels:
      raise ValueError(
          f"CLIP.image_region_head: roi_feats must be [M, S, S, "
          f"{self.config.vision.res4_channels}]; got {tuple(roi_feats.shape)}"
      )
    return self.visual.head(roi_feats)

  def image_pyramid(self, images):
    """images: [N, H, W, 3] -> {"res2", "res3", "res4", "res5"} feature maps at strides 4, 8, 16,
    32 with 4, 8, 16, 32 x width channels (the FPN detector's inputs)."""
    self._require(True, "image_pyramid")
    _check_images(images, "image_pyramid")
    return self.visual.pyramid(images)

  # -- dense path (ViT) ------------------------------------------------------------------
  def image_tokens(self, images):
    """images: [N, H, W, 3] -> (cls [N, width], grid [N, gh, gw, width]) before ln_post."""
    self._require(False, "image_tokens")
    _check_images(images, "image_tokens")
    return self.visual.tokens(images)

  def image_project(self, tokens):
    """tokens: [..., width] -> [..., D] (ln_post + proj)."""
    self._require(False, "image_project")
    return self.visual.project(tokens)


def normalize_images(images_uint8):
  """[..., 3] uint8 RGB -> float32 CLIP-normalised."""
  x = np.asarray(images_uint8, np.float32) / 255.0
  return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def init_params(config: CLIPConfig, seed: int = 0):
  """Random params (tree without the 'params' wrapper), drawn on the host with numpy.

  Same distributions as the modules' own initializers (`initializers.clip_rule`), but without
  `module.init`'s XLA compile of one threefry program per parameter, which takes tens of seconds
  on CPU even for tiny towers. `CLIP(config).init(key, images, tokens)` remains valid and gives
  the same distributions.
  """
  # "creation" order: the order these params have always been drawn in, so seeds keep their arrays
  return initializers.numpy_init(
      param_shapes(config), initializers.clip_rule(config), seed, order="creation"
  )


def param_shapes(config: CLIPConfig):
  """Param tree of `jax.ShapeDtypeStruct`, computed without allocating."""
  s = config.image_size
  images = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, config.text.context_length), jnp.int32)
  return jax.eval_shape(CLIP(config).init, jax.random.PRNGKey(0), images, tokens)["params"]


def learned_temperature(params) -> float:
  """1 / exp(logit_scale) of CLIP params, the scale capped at MAX_LOGIT_SCALE as CLIP caps it
  (OpenAI CLIP: 0.01). Raises KeyError when the params hold no logit_scale."""
  return 1.0 / min(float(np.exp(np.asarray(params["logit_scale"]))), MAX_LOGIT_SCALE)
