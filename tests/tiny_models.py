"""Randomly initialised tiny CLIPs for tests that need real weights but no download."""

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.detection import builders
from regionclip_jax.models.checkpoints import save_converted
from regionclip_jax.models.clip import CLIP, get_config


def tiny_clip_params(preset: str = "tiny_rn", seed: int = 0):
  """-> (CLIPConfig, numpy params) of `preset`, initialised as the detector's numpy init does."""
  cfg = get_config(preset)
  shapes = jax.eval_shape(
      CLIP(cfg).init,
      jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
      jax.ShapeDtypeStruct((1, 77), jnp.int32),
  )
  params = jax.tree.map(np.asarray, builders.numpy_init(shapes, seed=seed)["params"])
  return cfg, params


def save_tiny_clip(directory: str, preset: str = "tiny_rn", seed: int = 0):
  """Writes a converted tiny CLIP to `directory` -> (directory, CLIPConfig)."""
  cfg, params = tiny_clip_params(preset, seed)
  save_converted(directory, cfg, params, source="test")
  return directory, cfg
