"""The image-level "CLIP" stage: symmetric InfoNCE between whole images and captions, both towers
trainable. In the shapes world it trains the teacher that RegionCLIP then distils from."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from regionclip_jax.models.clip import CLIP
from regionclip_jax.pretrain.losses import l2_normalize
from regionclip_jax.train.state import TrainState, apply_gradients, masked_value_and_grad

PyTree = Any
MAX_LOGIT_SCALE = 100.0  # OpenAI clamps exp(logit_scale) at 100


def clip_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """Symmetric cross-entropy / 2 with a learned (log) temperature; [B, D] x [B, D] -> scalar."""
  scale = jnp.minimum(jnp.exp(logit_scale.astype(jnp.float32)), MAX_LOGIT_SCALE)
  logits = scale * l2_normalize(image_emb) @ l2_normalize(text_emb).T
  labels = jnp.arange(logits.shape[0])
  row = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  col = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
  return (row + col) / 2


def make_clip_step(model: CLIP, tx: optax.GradientTransformation, mask: PyTree):
  """-> step(state, batch, frozen=None) -> (state, metrics); batch: image [B, H, W, 3],
  caption_tokens [B, L]."""

  def step(state: TrainState, batch: dict, frozen=None):
    del frozen

    def loss_fn(params):
      v = {"params": params}
      img = model.apply(v, batch["image"], method=CLIP.encode_image)
      txt = model.apply(v, batch["caption_tokens"], method=CLIP.encode_text)
      loss = clip_loss(img, txt, params["logit_scale"])
      return loss, {"loss": loss, "logit_scale": jnp.exp(params["logit_scale"])}

    (_, metrics), grads = masked_value_and_grad(loss_fn, state.params, mask)
    return apply_gradients(state, grads, tx, mask), metrics

  return step
