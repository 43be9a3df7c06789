"""Frozen-BN statistics re-estimation (teacher stage option): after calibration, each frozen BN's
stored mean / var equal the batch statistics of the inputs it actually receives in a plain
(frozen-BN) forward pass, and nothing but BN mean / var changes."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from regionclip_jax.models import clip as clip_lib
from regionclip_jax.models.layers import FrozenBatchNorm
from regionclip_jax.pretrain.clip_pretrain import calibrate_frozen_bn


def _bn_inputs(model, params, images):
  seen = {}

  def spy(next_fun, args, kwargs, context):
    if isinstance(context.module, FrozenBatchNorm) and context.method_name == "__call__":
      seen[tuple(context.module.path)] = np.asarray(args[0], np.float64)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(spy):
    model.apply({"params": params}, images, method=clip_lib.CLIP.encode_image)
  return seen


def test_calibrated_bn_matches_the_statistics_of_its_inputs():
  cfg = clip_lib.get_config("tiny_rn")
  model = clip_lib.CLIP(cfg)
  params = clip_lib.init_params(cfg, seed=0)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(8, 64, 64, 3)), jnp.float32)
  new = calibrate_frozen_bn(model, params, images)

  inputs = _bn_inputs(model, new, images)
  flat = traverse_util.flatten_dict(dict(new))
  assert len(inputs) >= 10
  for path, x in inputs.items():
    axes = tuple(range(x.ndim - 1))
    np.testing.assert_allclose(
        np.asarray(flat[path + ("mean",)]), x.mean(axes), rtol=1e-3, atol=1e-4
    )
    np.testing.assert_allclose(np.asarray(flat[path + ("var",)]), x.var(axes), rtol=1e-3, atol=1e-4)

  old = traverse_util.flatten_dict(dict(params))
  changed = {k for k in old if not np.array_equal(np.asarray(old[k]), np.asarray(flat[k]))}
  assert changed and all(k[-1] in ("mean", "var") for k in changed)
