"""`LoadedCLIP`: a CLIP config with its params, jitted encoders and the tokenizer.

Its own file, below the checkpoint readers (which return it) and above the model and the OpenAI
converter (which it uses), so that `checkpoints.load` and `clip.load` need no import loop. Users
import it from the facade `models/clip.py`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.models import convert_openai, text, tokenizer
from regionclip_jax.models.clip_model import CLIP, CLIPConfig

Dtype = Any


@dataclasses.dataclass
class LoadedCLIP:
  """A CLIP with its params: jitted `encode_image`, `encode_text`, and `tokenize`."""

  config: CLIPConfig
  params: Any
  dtype: Dtype = jnp.float32

  @functools.cached_property
  def module(self) -> CLIP:
    return CLIP(self.config, dtype=self.dtype)

  @functools.cached_property
  def _encode_image(self):
    return jax.jit(lambda p, x: self.module.apply({"params": p}, x, method=CLIP.encode_image))

  @functools.cached_property
  def _encode_text(self):
    return jax.jit(lambda p, t: self.module.apply({"params": p}, t, method=CLIP.encode_text))

  def encode_image(self, images):
    """images: [N, H, W, 3] float, CLIP-normalised -> [N, D]."""
    return self._encode_image(self.params, jnp.asarray(images))

  def encode_text(self, tokens):
    """tokens: [B, L] int -> [B, D]. Columns after the batch's last EOT are cut first
    (`text.trim_to_eot`): the same embeddings up to rounding, at a fraction of the cost. Traced
    tokens (a caller's jit) and tokens wider than the context (the model names the error) are
    passed on uncut."""
    if not isinstance(tokens, jax.core.Tracer):
      if np.shape(tokens)[-1:] <= (self.config.text.context_length,):
        tokens = text.trim_to_eot(tokens)
    return self._encode_text(self.params, jnp.asarray(tokens))

  def tokenize(self, texts, context_length: int | None = None) -> np.ndarray:
    """B strings -> [B, context_length] int32 OpenAI ids (default: the model's context)."""
    return tokenizer.tokenize(texts, context_length or self.config.text.context_length)

  @property
  def logit_scale(self):
    return jnp.exp(self.params["logit_scale"])

  @classmethod
  def from_state_dict(cls, sd, config: CLIPConfig | None = None, dtype=jnp.float32) -> LoadedCLIP:
    config = config or convert_openai.config_from_state_dict(sd)
    return cls(config, convert_openai.params_from_state_dict(sd, config), dtype)
