"""Data of the pretraining stages: the shapes world or image-text pairs, as training streams and
as single-pass evaluation batches."""

from __future__ import annotations

import jax
import numpy as np

from regionclip_jax.data import pipeline, transforms as T
from regionclip_jax.data.coco import CocoCaptions
from regionclip_jax.data.image_text import TsvImageText
from regionclip_jax.data.shapes_world import ShapesWorld
from regionclip_jax.pretrain.common import WHERE


def shapes_train_source(config) -> pipeline.CachedSource:
  d = config.data
  # cached: after the first epoch a batch costs memory reads, not ~1.5 ms of generation a scene
  # on the cores the step needs (docs/findings.md, "Input pipeline speed")
  return pipeline.CachedSource(ShapesWorld(d.num_train_scenes, d.image_size, seed=config.seed))


def shapes_eval_source(config) -> ShapesWorld:
  """Held-out scenes (their own seed); also where the concept names come from."""
  d = config.data
  return ShapesWorld(d.num_eval_scenes, d.image_size, seed=d.eval_seed)


def real_source(config):
  """The image-text pairs of data.source 'tsv' or 'coco_captions'."""
  d = config.data
  # reduced-size JPEG decoding down to (not below) the largest resize that follows
  draft = (max(d.short_edge_lengths), d.max_size) if d.draft_decode else None
  if d.source == "tsv":
    if not d.image_tsv or not d.text_tsv:
      raise ValueError(f"{WHERE}: data.source='tsv' needs data.image_tsv and data.text_tsv")
    return TsvImageText(d.image_tsv, d.text_tsv, policy="skip", draft_for=draft)
  if not d.coco_captions or not d.coco_image_dir:
    raise ValueError(
        f"{WHERE}: data.source='coco_captions' needs data.coco_captions and data.coco_image_dir"
    )
  return CocoCaptions(d.coco_captions, d.coco_image_dir, policy="skip", draft_for=draft)


def train_source(config):
  """-> (training source, concept names: the shapes world's, none for real data)."""
  if config.data.source == "shapes_world":
    return shapes_train_source(config), list(shapes_eval_source(config).concepts)
  return real_source(config), []


def train_iterator(config, source, batch_size: int, tokenize, seed_offset: int = 0):
  """Endless shuffled batches of this process's share of `batch_size` (global)."""
  d = config.data
  if d.source == "shapes_world":
    tf = T.shapes_world_transforms(
        image_size=d.image_size, max_boxes=d.max_boxes, flip=d.flip, tokenize_fn=tokenize
    )
  else:
    tf = T.pretrain_transforms(
        short_edge_lengths=tuple(d.short_edge_lengths),
        max_size=d.max_size,
        flip=d.flip,
        tokenize_fn=tokenize,
        normalize=d.normalize_on_host,
        backend=d.resize_backend,
    )
  per_process = batch_size // jax.process_count()
  return pipeline.make_pipeline(
      source,
      tf,
      batch_size=per_process,
      seed=config.seed + seed_offset,
      shuffle=True,
      num_threads=d.num_threads,
      num_workers=d.num_workers,
  )


def scene_batches(config, source, batch_size: int):
  """One unshuffled pass over shapes-world scenes, without captions, on every process whole."""
  d = config.data
  tf = T.shapes_world_transforms(image_size=d.image_size, max_boxes=d.max_boxes, captions=False)
  return pipeline.make_pipeline(
      source,
      tf,
      batch_size=batch_size,
      shuffle=False,
      num_epochs=1,
      shard_by_process=False,
      num_threads=d.num_threads,
      batch_prefetch=0,
  )


def calibration_images(config, source, n: int) -> np.ndarray:
  """The first n training scenes, normalised as in training: [n, H, W, 3] float32."""
  n = min(n, len(source))
  return np.asarray(next(iter(scene_batches(config, source, n)))["image"], np.float32)
