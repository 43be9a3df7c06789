"""The concept pool: one text embedding per concept from the frozen teacher (or a given .npy /
official .pth file), the classifier of both the pseudo labels in training and region recognition
in evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.data.validation import read_names
from regionclip_jax.models import clip as clip_lib
from regionclip_jax.models import prompts
from regionclip_jax.models.checkpoints.embeddings import read_embeddings
from regionclip_jax.pretrain.common import WHERE


def concept_pool(config, teacher_cfg, teacher_params, tokenize, names) -> np.ndarray:
  """-> [C, D] float32 unnormalised 81-template means from the (frozen) teacher text tower."""
  if config.model.concept_embeddings:
    # .npy or the official extract_concept_features .pth; width checked against the teacher
    return read_embeddings(config.model.concept_embeddings, dim=teacher_cfg.embed_dim)
  if config.model.concepts_file:
    names = read_names(config.model.concepts_file, "concepts file")
  if not names:
    raise ValueError(
        f"{WHERE}: no concept pool: set model.concept_embeddings (.npy / .pth) or model.concepts_file"
    )
  model = clip_lib.CLIP(teacher_cfg)
  enc = jax.jit(lambda p, t: model.apply({"params": p}, t, method=clip_lib.CLIP.encode_text))
  return prompts.concept_embeddings(
      lambda t: enc(teacher_params, jnp.asarray(t)), names, tokenize, batch_size=81
  )


def near_identical(
    concept_emb: np.ndarray, names, threshold: float = 0.95, limit: int | None = None
) -> list[tuple[str, str, float]]:
  """Concept pairs the text tower cannot tell apart (cosine >= threshold, closest first, at most
  `limit`); none when `names` do not index the pool (a given .npy or concepts file)."""
  if names and len(names) == concept_emb.shape[0]:
    return prompts.similar_concepts(concept_emb, names, threshold, limit)
  return []
