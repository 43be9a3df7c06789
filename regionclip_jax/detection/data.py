"""Detection data from a finetune config: sources, transforms and the class splits.

`data_for(cfg, train)` is the one place that maps `cfg.data` to a record source; training keeps
base-class boxes only (`BaseLabelMap`), testing every class.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from regionclip_jax.data.coco import CocoDetection
from regionclip_jax.data.shapes_world import ScenesWithout, ShapesWorld
from regionclip_jax.data.transforms import detection_transforms, shapes_world_transforms


class BaseLabelMap:
  """Grain map: dataset labels -> training-class indices; boxes of other classes (novel) are
  masked out, as in base-only training."""

  def __init__(self, lookup: Sequence[int]):
    self.lookup = np.asarray(lookup, np.int32)

  def __call__(self, record: dict) -> dict:
    record = dict(record)
    lab = np.asarray(record["labels"], np.int32)
    mapped = np.where(
        (lab >= 0) & (lab < len(self.lookup)),
        self.lookup[np.clip(lab, 0, len(self.lookup) - 1)],
        -1,
    )
    record["box_mask"] = np.asarray(record["box_mask"], bool) & (mapped >= 0)
    record["labels"] = np.where(record["box_mask"], mapped, -1).astype(np.int32)
    return record


def pad_size(cfg) -> int:
  """The square side every batch image is padded to (model init and compiled shapes)."""
  if cfg.data.name == "shapes_world":
    return cfg.data.image_size
  return -(-cfg.data.max_size // 32) * 32


def _shapes(cfg, train: bool):
  n = cfg.data.num_train if train else cfg.data.num_test
  seed = cfg.seed + (0 if train else 1000)
  if train and cfg.data.get("exclude_novel_images", False):
    # about half of the scenes show a novel shape: scan a world 4x larger for n novel-free ones
    world = ShapesWorld(4 * n + 64, image_size=cfg.data.image_size, seed=seed)
    src = ScenesWithout(world, n, world.novel_names)
  else:
    src = ShapesWorld(n, image_size=cfg.data.image_size, seed=seed)
  tf = shapes_world_transforms(
      image_size=cfg.data.image_size,
      max_boxes=cfg.data.max_boxes,
      flip=cfg.data.flip and train,
      captions=False,
  )
  return src, tf, list(src.concepts), list(src.base_names), list(src.novel_names)


def _coco(cfg, train: bool):
  """COCO / LVIS-format json + image directory (`data.coco.CocoDetection`): training reads the
  base split only (`<base_classes>_base`), testing every class (`<base_classes>_all`)."""
  prefix = {"coco_ovd": "coco_ovd", "lvis": "lvis", "lvis_v1": "lvis"}.get(cfg.data.base_classes)
  if prefix is None:
    raise ValueError(
        f"{__name__}: data.base_classes must be 'coco_ovd' or 'lvis', got "
        f"{cfg.data.base_classes!r}"
    )
  ann = cfg.data.train_annotations if train else cfg.data.test_annotations
  img = cfg.data.train_images if train else cfg.data.test_images
  d = cfg.data
  # reduced-size JPEG decoding down to (not below) the largest resize that follows
  draft = (max(max(d.short_edge_lengths), d.test_size), d.max_size) if d.draft_decode else None
  src = CocoDetection(
      ann,
      img,
      split=f"{prefix}_base" if train else f"{prefix}_all",
      drop_empty=train,
      draft_for=draft,
  )
  tf = detection_transforms(
      train=train,
      short_edge_lengths=tuple(d.short_edge_lengths),
      test_size=d.test_size,
      max_size=d.max_size,
      max_boxes=d.max_boxes,
      flip=d.flip,
      normalize=d.normalize_on_host,
      backend=d.resize_backend,
  )
  names = list(src.class_names)
  if train:
    return src, tf, names, names, []
  base = CocoDetection(ann, img, split=f"{prefix}_base", drop_empty=False).class_names
  return src, tf, names, list(base), [n for n in names if n not in base]


def data_for(cfg, train: bool):
  """-> (source, transforms, label names (the records' labels index them), base names, novel
  names)."""
  if cfg.data.name == "shapes_world":
    return _shapes(cfg, train)
  if cfg.data.name == "coco":
    return _coco(cfg, train)
  raise ValueError(f"{__name__}: data.name must be 'shapes_world' or 'coco', got {cfg.data.name!r}")
