"""The image-level "CLIP" stage: symmetric InfoNCE between whole images and captions, both towers
trainable. In the shapes world it trains the teacher that RegionCLIP then distils from."""

from __future__ import annotations

import functools

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from regionclip_jax.models.clip import CLIP, MAX_LOGIT_SCALE
from regionclip_jax.models.layers import FrozenBatchNorm
from regionclip_jax.pretrain.losses import l2_normalize
from regionclip_jax.train.state import TrainState, apply_gradients, masked_value_and_grad
from regionclip_jax.data.transforms import normalize_batch

PyTree = Any
# With batch_norm="train" the BN affine trains and only the statistics stay out of the optimiser.
BN_STATISTICS_REGEX = r"(^|/)(bn\d+|downsample_bn)/(mean|var)$"
BATCH_NORM_MODES = ("frozen", "train")


def clip_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """Symmetric cross-entropy / 2 with a learned (log) temperature; [B, D] x [B, D] -> scalar."""
  scale = jnp.minimum(jnp.exp(logit_scale.astype(jnp.float32)), MAX_LOGIT_SCALE)
  logits = scale * l2_normalize(image_emb) @ l2_normalize(text_emb).T
  labels = jnp.arange(logits.shape[0])
  row = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  col = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
  return (row + col) / 2


def _train_mode_bn(next_fun, args, kwargs, context):
  """Method interceptor: every FrozenBatchNorm normalises with its batch statistics and lets
  gradients reach its scale / bias (the params are read directly, bypassing its stop_gradient)."""
  module = context.module
  if not isinstance(module, FrozenBatchNorm) or context.method_name != "__call__":
    return next_fun(*args, **kwargs)
  x = args[0].astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean, var = jnp.mean(x, axis=axes), jnp.var(x, axis=axes)
  p = module.variables["params"]
  y = (x - mean) * jax.lax.rsqrt(var + module.eps) * p["scale"] + p["bias"]
  return y.astype(args[0].dtype)


def make_clip_step(
    model: CLIP, tx: optax.GradientTransformation, mask: PyTree, batch_norm: str = "frozen"
):
  """-> step(state, batch, frozen=None) -> (state, metrics); batch: image [B, H, W, 3],
  caption_tokens [B, L].

  batch_norm "frozen": the image tower's BN is a fixed affine (RegionCLIP's setting; fine for a
  pretrained tower). "train": BN as CLIP itself trains it (batch statistics, trainable affine;
  the mask must leave scale / bias trainable, see BN_STATISTICS_REGEX) -- a tower trained from
  scratch with frozen identity BN barely learns (docs/findings.md, "Teacher training in the shapes world"). Afterwards
  `calibrate_frozen_bn` stores population statistics so the frozen BN reproduces it.
  """
  if batch_norm not in BATCH_NORM_MODES:
    raise ValueError(f"make_clip_step: batch_norm={batch_norm!r} is not one of {BATCH_NORM_MODES}")

  def encode_image(v, images):
    if batch_norm == "train":
      with nn.intercept_methods(_train_mode_bn):
        return model.apply(v, images, method=CLIP.encode_image)
    return model.apply(v, images, method=CLIP.encode_image)

  def step(state: TrainState, batch: dict, frozen=None):
    del frozen
    batch = normalize_batch(batch)  # uint8 from the real presets' host pipelines

    def loss_fn(params):
      v = {"params": params}
      img = encode_image(v, batch["image"])
      txt = model.apply(v, batch["caption_tokens"], method=CLIP.encode_text)
      loss = clip_loss(img, txt, params["logit_scale"])
      return loss, {"loss": loss, "logit_scale": jnp.exp(params["logit_scale"])}

    (_, metrics), grads = masked_value_and_grad(loss_fn, state.params, mask)
    return apply_gradients(state, grads, tx, mask), metrics

  return step


def frozen_bn_statistics(model: CLIP, params: PyTree, images: jax.Array) -> dict:
  """Batch statistics at every FrozenBatchNorm of the image tower, each BN normalising with its
  own batch statistics in the same pass (train-mode BN), so downstream statistics see normalised
  inputs. images: [N, H, W, 3] -> {('visual', ..., 'bn1'): (mean [C], var [C])}."""
  stats: dict = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, FrozenBatchNorm) or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    x = args[0].astype(jnp.float32)
    mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
    var = jnp.var(x, axis=tuple(range(x.ndim - 1)))
    stats[tuple(module.path)] = (mean, var)
    p = module.variables["params"]
    y = (x - mean) * jax.lax.rsqrt(var + module.eps) * p["scale"] + p["bias"]
    return y.astype(args[0].dtype)

  with nn.intercept_methods(interceptor):
    model.apply({"params": params}, images, method=CLIP.encode_image)
  return stats


def calibrate_frozen_bn(model: CLIP, params: PyTree, images: jax.Array) -> PyTree:
  """params with every image-tower FrozenBatchNorm's mean / var set to the batch statistics of
  `images` [N, H, W, 3]. CLIP trains its BN; ours is frozen (RegionCLIP's transfer setting), so a
  tower trained from scratch gets its normalisation by re-estimating the statistics now and then
  (as detectron2's precise BN does), instead of running unnormalised."""
  stats = _stats_fn(model)(params, images)
  flat = traverse_util.flatten_dict(dict(params))
  for path, (mean, var) in stats.items():
    flat[path + ("mean",)] = mean.astype(flat[path + ("mean",)].dtype)
    flat[path + ("var",)] = var.astype(flat[path + ("var",)].dtype)
  return traverse_util.unflatten_dict(flat)


@functools.cache
def _stats_fn(model: CLIP):
  """One compiled statistics program per (hashable, frozen) model definition."""
  return jax.jit(lambda p, x: frozen_bn_statistics(model, p, x))
