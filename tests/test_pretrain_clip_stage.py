"""The image-level CLIP stage with batch_norm="train": BN normalises with batch statistics and its
affine trains (the statistics do not); after `calibrate_frozen_bn` on the same batch the frozen
tower reproduces the train-mode embeddings."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from regionclip_jax.models import clip as clip_lib
from regionclip_jax.pretrain import clip_pretrain as cp
from regionclip_jax.train import optimizer as opt
from regionclip_jax.train.state import create_train_state


def _setup(batch_norm):
  cfg = clip_lib.get_config("tiny_rn")
  model = clip_lib.CLIP(cfg)
  params = clip_lib.init_params(cfg, seed=0)
  frozen = cp.BN_STATISTICS_REGEX if batch_norm == "train" else clip_lib.FROZEN_BN_REGEX
  mask = opt.trainable_mask(params, trainable=(".*",), frozen=(frozen,))
  tx = opt.make_optimizer("adamw", 1e-3, weight_decay=0.0, clip_norm=1.0)
  state = create_train_state(params, tx, mask)
  rng = np.random.default_rng(0)
  batch = {
      "image": jnp.asarray(rng.normal(size=(6, 64, 64, 3)), jnp.float32),
      "caption_tokens": jnp.asarray(rng.integers(1, 400, (6, 8)), jnp.int32),
  }
  return (
      model,
      params,
      jax.jit(cp.make_clip_step(model, tx, mask, batch_norm=batch_norm)),
      state,
      batch,
  )


def _changed(a, b):
  fa, fb = traverse_util.flatten_dict(dict(a)), traverse_util.flatten_dict(dict(b))
  return {"/".join(k) for k in fa if not np.array_equal(np.asarray(fa[k]), np.asarray(fb[k]))}


@pytest.mark.parametrize("batch_norm", ["train", "frozen"])
def test_which_bn_params_train(batch_norm):
  _, params, step, state, batch = _setup(batch_norm)
  new, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  changed = _changed(params, new.params)
  bn_affine = {k for k in changed if re.search(r"(^|/)(bn\d+|downsample_bn)/(scale|bias)$", k)}
  assert not any(k.endswith("/mean") or k.endswith("/var") for k in changed)
  if batch_norm == "train":
    assert len(bn_affine) >= 10
  else:
    assert not bn_affine


def test_calibrated_frozen_tower_reproduces_train_mode():
  model, params, _, _, batch = _setup("train")
  with nn.intercept_methods(cp._train_mode_bn):
    want = model.apply({"params": params}, batch["image"], method=clip_lib.CLIP.encode_image)
  plain = model.apply({"params": params}, batch["image"], method=clip_lib.CLIP.encode_image)
  cal = cp.calibrate_frozen_bn(model, params, batch["image"])
  got = model.apply({"params": cal}, batch["image"], method=clip_lib.CLIP.encode_image)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-3, atol=2e-4)
  assert np.abs(np.asarray(plain) - np.asarray(want)).max() > 1e-2  # calibration mattered


def test_unknown_mode_is_refused():
  with pytest.raises(ValueError, match="batch_norm"):
    cp.make_clip_step(None, None, None, batch_norm="sync")
