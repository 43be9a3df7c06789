"""The three RegionCLIP pretraining losses (docs/design.md, "Pretraining"), static-shape and masked.

Regions are grouped: `[G, R, ...]` where a group is the set of images one GPU held in the
official code (3 images x 100 regions). Pseudo-label filtering, the distillation `batchmean` and
the contrastive R x R matrix are all per group, and the group losses are averaged, which is
what DDP's gradient averaging over per-GPU losses computes. The image-text loss is over the
global batch (official `GATHER_GPUS`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TEMPERATURE = 0.01


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Unit-normalise the last axis; computed in float32 for bf16 inputs."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _mean_over_groups(per_group: jax.Array, group_ok: jax.Array) -> jax.Array:
  """Mean of `per_group` [G] over groups with `group_ok`; 0 when no group counts."""
  n = jnp.sum(group_ok)
  total = jnp.sum(jnp.where(group_ok, per_group, 0.0))
  return jnp.where(n > 0, total / jnp.maximum(n, 1), 0.0)


def region_distill_loss(
    student_regions: jax.Array,
    concept_emb: jax.Array,
    teacher_probs: jax.Array,
    keep: jax.Array,
    temperature: float = TEMPERATURE,
) -> jax.Array:
  """KL(teacher || student) over the concept pool on kept regions.

  Official: `kl_div(log(softmax(cos(s, concepts) / tau)), p_teacher, reduction="batchmean")`
  per group, i.e. the row KLs summed and divided by the number of kept rows.

  Args:
    student_regions: [G, R, D] unnormalised student region embeddings.
    concept_emb: [C, D] concept embeddings (normalised here).
    teacher_probs: [G, R, C] teacher softmax over the pool (rows sum to 1).
    keep: [G, R] bool, the pseudo-label filter (False also for padding).
  Returns:
    scalar float32.
  """
  s = l2_normalize(student_regions)
  c = l2_normalize(concept_emb)
  logits = jnp.einsum("grd,cd->grc", s, c) / temperature
  log_q = jax.nn.log_softmax(logits, axis=-1)
  p = jax.lax.stop_gradient(teacher_probs.astype(jnp.float32))
  # torch's kl_div uses xlogy: a zero target contributes 0, not nan.
  plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
  row_kl = jnp.sum(plogp - p * log_q, axis=-1)  # [G, R]
  n_kept = jnp.sum(keep, axis=-1)
  per_group = jnp.sum(jnp.where(keep, row_kl, 0.0), axis=-1) / jnp.maximum(n_kept, 1)
  return _mean_over_groups(per_group, n_kept > 0)


def region_contrastive_loss(
    student_regions: jax.Array,
    target_emb: jax.Array,
    targets: jax.Array,
    keep: jax.Array,
    temperature: float = TEMPERATURE,
) -> jax.Array:
  """Region-concept contrastive loss with several positives per row (official MILCrossEntropy).

  Within a group: logits[i, j] = cos(student_i, concept_emb[target_j]) / tau over kept i, j;
  positives of row i are the kept j with target_j == target_i (always including j = i);
  row loss = -log(sum over positives of softmax_j(logits[i])); mean over kept rows.

  Args:
    student_regions: [G, R, D] unnormalised student region embeddings.
    target_emb: [G, R, D] concept embedding of each region's pseudo target (normalised here).
    targets: [G, R] int32 pseudo-label concept index.
    keep: [G, R] bool.
  Returns:
    scalar float32.
  """
  s = l2_normalize(student_regions)
  t = l2_normalize(jax.lax.stop_gradient(target_emb))
  logits = jnp.einsum("gid,gjd->gij", s, t) / temperature
  col_ok = keep[:, None, :]
  positive = (targets[:, :, None] == targets[:, None, :]) & col_ok
  neg_inf = jnp.finfo(jnp.float32).min
  log_all = jax.nn.logsumexp(jnp.where(col_ok, logits, neg_inf), axis=-1)
  log_pos = jax.nn.logsumexp(jnp.where(positive, logits, neg_inf), axis=-1)
  row_loss = log_all - log_pos  # [G, R]
  n_kept = jnp.sum(keep, axis=-1)
  per_group = jnp.sum(jnp.where(keep, row_loss, 0.0), axis=-1) / jnp.maximum(n_kept, 1)
  return _mean_over_groups(per_group, n_kept > 0)


def image_text_loss(
    image_emb: jax.Array,
    text_emb: jax.Array,
    valid: jax.Array | None = None,
    temperature: float = TEMPERATURE,
) -> jax.Array:
  """Symmetric InfoNCE between global-box embeddings and caption embeddings, / 2.

  Args:
    image_emb: [B, D] (global batch; sharding is the caller's business).
    text_emb: [B, D].
    valid: optional [B] bool; invalid rows and columns are left out (padding images).
  Returns:
    scalar float32.
  """
  b = image_emb.shape[0]
  if valid is None:
    valid = jnp.ones((b,), bool)
  i = l2_normalize(image_emb)
  t = l2_normalize(text_emb)
  logits = (i @ t.T) / temperature
  neg_inf = jnp.finfo(jnp.float32).min
  pair_ok = valid[:, None] & valid[None, :]
  masked = jnp.where(pair_ok, logits, neg_inf)
  diag = jnp.diagonal(logits)
  row = jax.nn.logsumexp(masked, axis=1) - diag
  col = jax.nn.logsumexp(masked, axis=0) - diag
  n = jnp.maximum(jnp.sum(valid), 1)
  row_loss = jnp.sum(jnp.where(valid, row, 0.0)) / n
  col_loss = jnp.sum(jnp.where(valid, col, 0.0)) / n
  return (row_loss + col_loss) / 2.0
