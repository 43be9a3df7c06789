"""The RegionCLIP pretraining step: proposals -> teacher pseudo-labels -> student regions -> the
three losses -> masked SGD update. Pure function of (state, batch, frozen inputs)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from regionclip_jax.models.clip import CLIP
from regionclip_jax.models.region_encoder import global_boxes, region_features
from regionclip_jax.pretrain import losses
from regionclip_jax.pretrain.proposals import ProposalFn
from regionclip_jax.pretrain.pseudo_labels import pseudo_concept_labels
from regionclip_jax.train.state import TrainState, apply_gradients, masked_value_and_grad
from regionclip_jax.data.transforms import normalize_batch

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Weights (0 or `enabled=False` switches a term off) and the official constants."""

  region_distill: float = 1.0
  region_contrastive: float = 1.0
  image_text: float = 1.0
  temperature: float = 0.01
  concept_threshold: float = 0.1
  group_size: int = 3  # images per region-contrastive group (the official per-GPU batch)
  image_text_temperature: float = 0.0  # 0: `temperature` (official: one tau for all three terms)

  def enabled(self) -> dict[str, float]:
    return {
        k: w
        for k, w in (
            ("region_distill", self.region_distill),
            ("region_contrastive", self.region_contrastive),
            ("image_text", self.image_text),
        )
        if w
    }


def regionclip_losses(
    student: CLIP,
    params: PyTree,
    teacher: CLIP,
    frozen: dict,
    batch: dict,
    proposals: jax.Array,
    proposal_valid: jax.Array,
    cfg: LossConfig,
    region_kw: dict,
) -> tuple[jax.Array, dict]:
  """-> (weighted total, metrics). frozen: teacher_params, concept_emb [C, D],
  teacher_concept_emb [C, Dt]. batch: image [B, H, W, 3], caption_tokens [B, L]."""
  images = batch["image"]
  b, r = proposals.shape[:2]
  g = cfg.group_size
  if b % g:
    raise ValueError(
        f"pretrain step: per-step batch {b} is not a multiple of " f"loss.group_size={g}"
    )
  terms = cfg.enabled()
  metrics = {}
  need_regions = "region_distill" in terms or "region_contrastive" in terms
  boxes = (
      jnp.concatenate([proposals, global_boxes(images)], axis=1)
      if "image_text" in terms
      else proposals
  )
  if not need_regions:
    boxes = boxes[:, r:]
  feats = region_features(student, params, images, boxes, **region_kw).astype(jnp.float32)
  out = {}
  if need_regions:
    t_feats = region_features(teacher, frozen["teacher_params"], images, proposals, **region_kw)
    t_feats = jax.lax.stop_gradient(t_feats.astype(jnp.float32))
    grouped = lambda x: x.reshape((b // g, g * r) + x.shape[2:])
    s_reg, t_reg, valid = grouped(feats[:, :r]), grouped(t_feats), grouped(proposal_valid)
    pl = pseudo_concept_labels(
        t_reg, frozen["teacher_concept_emb"], valid, cfg.concept_threshold, cfg.temperature
    )
    metrics["kept_fraction"] = jnp.sum(pl.keep) / jnp.maximum(jnp.sum(valid), 1)
    if "region_distill" in terms:
      out["region_distill"] = losses.region_distill_loss(
          s_reg, frozen["concept_emb"], pl.probs, pl.keep, cfg.temperature
      )
    if "region_contrastive" in terms:
      target_emb = jnp.take(frozen["concept_emb"], pl.targets, axis=0)
      out["region_contrastive"] = losses.region_contrastive_loss(
          s_reg, target_emb, pl.targets, pl.keep, cfg.temperature
      )
  if "image_text" in terms:
    text = student.apply({"params": params}, batch["caption_tokens"], method=CLIP.encode_text)
    text = jax.lax.stop_gradient(text.astype(jnp.float32))
    out["image_text"] = losses.image_text_loss(
        feats[:, -1], text, temperature=cfg.image_text_temperature or cfg.temperature
    )
  total = sum(terms[k] * v for k, v in out.items())
  return total, {"loss": total, **out, **metrics}


def make_pretrain_step(
    student: CLIP,
    teacher: CLIP,
    tx: optax.GradientTransformation,
    mask: PyTree,
    proposal_fn: ProposalFn,
    loss_cfg: LossConfig,
    *,
    seed: int = 0,
    region_kw: dict | None = None,
) -> Callable[[TrainState, dict, dict], tuple[TrainState, dict]]:
  """-> step(state, batch, frozen) -> (state, metrics); jit it with `train.sharding.jit_step`.

  Randomness (proposals) is fold_in(seed, step): a resumed run draws the same boxes."""
  region_kw = dict(region_kw or {})
  if not loss_cfg.enabled():
    raise ValueError(
        "pretrain: every loss is switched off (loss.region_distill, "
        "loss.region_contrastive, loss.image_text are all 0)"
    )

  def step(state: TrainState, batch: dict, frozen: dict):
    batch = normalize_batch(batch)  # uint8 from the real presets' host pipelines
    key = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
    proposals, valid = proposal_fn(key, batch)

    def loss_fn(params):
      return regionclip_losses(
          student, params, teacher, frozen, batch, proposals, valid, loss_cfg, region_kw
      )

    (_, metrics), grads = masked_value_and_grad(loss_fn, state.params, mask)
    new_state = apply_gradients(state, grads, tx, mask)
    metrics = dict(metrics)
    metrics["grad_norm"] = optax.global_norm(grads)
    return new_state, metrics

  return step
