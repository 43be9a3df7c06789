"""CLIP towers (ModifiedResNet, ViT, text), OpenAI state-dict conversion, tokenizer."""

from regionclip_jax.models.clip import (
    CLIP,
    CLIP_MEAN,
    CLIP_STD,
    FROZEN_BN_REGEX,
    PRESETS,
    CLIPConfig,
    LoadedCLIP,
    ResNetConfig,
    TextConfig,
    ViTConfig,
    config_from_state_dict,
    get_config,
    init_params,
    load,
    normalize_images,
    param_shapes,
    params_from_state_dict,
    state_dict_from_params,
)

__all__ = [
    "CLIP",
    "CLIP_MEAN",
    "CLIP_STD",
    "FROZEN_BN_REGEX",
    "PRESETS",
    "CLIPConfig",
    "LoadedCLIP",
    "ResNetConfig",
    "TextConfig",
    "ViTConfig",
    "config_from_state_dict",
    "get_config",
    "init_params",
    "load",
    "normalize_images",
    "param_shapes",
    "params_from_state_dict",
    "state_dict_from_params",
    "tokenize",
]


def tokenize(texts, context_length: int = 77):
  """[B, context_length] int32 OpenAI token ids (see `regionclip_jax.models.tokenizer`)."""
  from regionclip_jax.models.tokenizer import tokenize as _tokenize

  return _tokenize(texts, context_length)
