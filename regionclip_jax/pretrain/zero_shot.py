"""Zero-shot region recognition with ground-truth boxes: region embeddings vs. concept embeddings."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import jax
import numpy as np

from regionclip_jax.evaluation.region_metrics import region_correct, region_top1
from regionclip_jax.models.clip import CLIP
from regionclip_jax.models.region_encoder import region_features
from regionclip_jax.pretrain.losses import l2_normalize

PyTree = Any


def make_region_logits_fn(module: CLIP, region_kw: dict | None = None):
  """-> jitted fn(params, images [N,H,W,3], boxes [N,R,4], concept_emb [C,D]) -> cosines [N,R,C]."""
  region_kw = dict(region_kw or {})

  @jax.jit
  def fn(params, images, boxes, concept_emb):
    feats = region_features(module, params, images, boxes, **region_kw)
    return l2_normalize(feats) @ l2_normalize(concept_emb).T

  return fn


def evaluate_regions(
    logits_fn,
    params: PyTree,
    batches: Iterable[dict],
    concept_emb,
    base_ids: Sequence[int],
    novel_ids: Sequence[int],
    return_correct: bool = False,
):
  """Top-1 over all / base / novel GT regions. batches: dicts with image, boxes, box_mask, labels.
  return_correct: also return (correct [M] bool, labels [M]) per real region, for paired tests."""
  logits, labels, masks = [], [], []
  for b in batches:
    logits.append(np.asarray(logits_fn(params, b["image"], b["boxes"], concept_emb)))
    labels.append(np.asarray(b["labels"]))
    masks.append(np.asarray(b["box_mask"]))
  logits, labels, masks = np.concatenate(logits), np.concatenate(labels), np.concatenate(masks)
  acc = region_top1(logits, labels, masks, base_ids=base_ids, novel_ids=novel_ids)
  return (acc, region_correct(logits, labels, masks)) if return_correct else acc
