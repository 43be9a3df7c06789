"""The public CLIP API: model, configs and presets, host-side init, OpenAI conversion, `load`.

A facade over the files that implement it, so that callers have one import:
- `clip_model.py`: `CLIP`, `ResNetConfig` / `ViTConfig` / `TextConfig` / `CLIPConfig`,
  `PRESETS` / `get_config`, `init_params`, `param_shapes`, `normalize_images`,
  `learned_temperature` and the constants;
- `convert_openai.py`: OpenAI state dict <-> Flax params;
- `loaded.py`: `LoadedCLIP`, a config with its params and jitted encoders;
- `checkpoints/`: the readers behind `load` (every public checkpoint format).
Nothing below imports this file, so it may import all of them (docs/design.md, "CLIP towers").

Parameter tree (OpenAI naming, '.' -> '/'): `visual/...`, `token_embedding/embedding`,
`positional_embedding`, `transformer/resblocks/<i>/...`, `ln_final`, `text_projection`,
`logit_scale` (log of the inverse temperature, like OpenAI).
"""

from __future__ import annotations

from regionclip_jax.models import checkpoints
from regionclip_jax.models.clip_model import (
    CLIP,
    CLIP_MEAN,
    CLIP_STD,
    FROZEN_BN_REGEX,
    MAX_LOGIT_SCALE,
    PRESETS,
    CLIPConfig,
    Dtype,
    ResNetConfig,
    TextConfig,
    ViTConfig,
    get_config,
    init_params,
    learned_temperature,
    normalize_images,
    param_shapes,
)
from regionclip_jax.models.convert_openai import (
    config_from_state_dict,
    params_from_state_dict,
    state_dict_from_params,
)
from regionclip_jax.models.loaded import LoadedCLIP

__all__ = [
    "CLIP",
    "CLIP_MEAN",
    "CLIP_STD",
    "FROZEN_BN_REGEX",
    "MAX_LOGIT_SCALE",
    "PRESETS",
    "CLIPConfig",
    "Dtype",
    "LoadedCLIP",
    "ResNetConfig",
    "TextConfig",
    "ViTConfig",
    "config_from_state_dict",
    "get_config",
    "init_params",
    "learned_temperature",
    "load",
    "normalize_images",
    "param_shapes",
    "params_from_state_dict",
    "state_dict_from_params",
]


def load(path, source: str | None = None) -> LoadedCLIP:
  """Load any supported checkpoint (see `regionclip_jax.models.checkpoints.load`)."""
  return checkpoints.load(path, source=source)
