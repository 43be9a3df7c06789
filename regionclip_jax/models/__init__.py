"""CLIP towers (ModifiedResNet, ViT, text), region features, checkpoint readers and OpenAI
state-dict conversion, tokenizer, prompts (docs/design.md, "CLIP towers"); detectron2's ResNet
(`msra_resnet.py`), the backbone of the official offline RPNs.

Re-exports the `clip` facade and `tokenize`.
"""

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
from regionclip_jax.models.tokenizer import tokenize

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
