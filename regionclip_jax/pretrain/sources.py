"""Data of the pretraining stages: the shapes world or image-text pairs, as training streams and
as single-pass evaluation batches.

Image-text pairs come from `data.source` (configs/pretrain.py): "tsv" (RegionCLIP image / text
TSV pairs), "coco_captions" (COCO Captions json + image folder), "jsonl", "tfds" (an image-text
TFDS dataset prepared as array_record) or "array_record" (tools/make_pretrain_data). Bad records
are dropped and counted (the report comes at the end of the run).
"""

from __future__ import annotations


import jax
import numpy as np

from regionclip_jax.data import pipeline, transforms as T
from regionclip_jax.data.coco import CocoCaptions
from regionclip_jax.data.array_record import ArrayRecordImageText
from regionclip_jax.data.image_text import JsonlImageText, TsvImageText
from regionclip_jax.data.shapes_world import ShapesWorld
from regionclip_jax.data.tfds_source import TfdsImageText
from regionclip_jax.pretrain.common import WHERE

# The data.* keys each real source needs set, with what they hold.
REQUIRED_KEYS = {
    "tsv": (("image_tsv", "image TSV path(s)"), ("text_tsv", "text TSV path(s)")),
    "coco_captions": (
        ("coco_captions", "a COCO Captions json"),
        ("coco_image_dir", "its image folder"),
    ),
    "jsonl": (("jsonl_path", 'a JSONL of {"image": path, "captions": [...]} lines'),),
    "tfds": (("tfds_name", "a TFDS image-text dataset name, e.g. 'coco_captions'"),),
    "array_record": (("array_record_path", "array_record path(s) from tools/make_pretrain_data"),),
}
SOURCES = ("shapes_world", *REQUIRED_KEYS)


def shapes_train_source(config) -> pipeline.CachedSource:
  d = config.data
  # cached: after the first epoch a batch costs memory reads, not ~1.5 ms of generation a scene
  # on the cores the step needs (docs/findings.md, "Input pipeline speed")
  return pipeline.CachedSource(ShapesWorld(d.num_train_scenes, d.image_size, seed=config.seed))


def shapes_eval_source(config) -> ShapesWorld:
  """Held-out scenes (their own seed); also where the concept names come from."""
  d = config.data
  return ShapesWorld(d.num_eval_scenes, d.image_size, seed=d.eval_seed)


def check_source(config) -> None:
  """One-line ValueError for an unknown data.source or an empty key the source needs."""
  d = config.data
  if d.source not in SOURCES:
    raise ValueError(f"{WHERE}: data.source={d.source!r} is not one of {list(SOURCES)}")
  for key, what in REQUIRED_KEYS.get(d.source, ()):
    if not d.get(key):
      raise ValueError(f"{WHERE}: data.source={d.source!r} needs data.{key} ({what}); it is empty")


def _paths(value: str) -> list[str]:
  """Comma-separated shards -> their paths."""
  return [p.strip() for p in value.split(",") if p.strip()]


def real_source(config):
  """The image-text pairs of a real data.source (module docstring); bad records follow
  data.on_error ("skip": dropped and counted; "strict": a DataError naming the record)."""
  check_source(config)
  d = config.data
  # reduced-size JPEG decoding down to (not below) the largest resize that follows
  draft = (max(d.short_edge_lengths), d.max_size) if d.draft_decode else None
  kw = dict(policy=d.on_error, draft_for=draft)
  if d.source == "tsv":
    return TsvImageText(_paths(d.image_tsv), _paths(d.text_tsv), **kw)
  if d.source == "coco_captions":
    return CocoCaptions(d.coco_captions, d.coco_image_dir, **kw)
  if d.source == "jsonl":
    return JsonlImageText(d.jsonl_path, d.image_root or None, **kw)
  if d.source == "array_record":
    return ArrayRecordImageText(_paths(d.array_record_path), **kw)
  if d.source == "tfds":
    # images come decoded from TFDS: no reduced-size decoding
    return TfdsImageText(
        d.tfds_name,
        d.tfds_split,
        d.tfds_data_dir or None,
        image_key=d.tfds_image_key,
        caption_key=d.tfds_caption_key,
        policy=d.on_error,
    )
  raise ValueError(f"{WHERE}: data.source={d.source!r} is not a real image-text source")


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
