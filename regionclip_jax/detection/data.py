"""Detection data from a finetune config: sources, transforms and the class splits.

`data_for(cfg, train)` is the one place that maps `cfg.data` to a record source; training keeps
base-class boxes only (`BaseLabelMap`), testing every class.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from regionclip_jax.data.categories import read_categories
from regionclip_jax.data.class_lists import BUILTIN_CLASS_SPLITS, resolve_class_list
from regionclip_jax.data.coco import CocoDetection
from regionclip_jax.data.shapes_world import ScenesWithout, ShapesWorld
from regionclip_jax.data.transforms import detection_transforms, shapes_world_transforms
from regionclip_jax.data.validation import DataError


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


def _coco_classes(cfg, train: bool) -> tuple[list[str], list[str]]:
  """-> (the label names of the split's records, the base names) from `data.base_classes`
  (checked against the train json) and `data.test_classes` (against the test json; "" = every
  category of the test json). `data.coco.resolve_class_list` reads the syntax."""
  d = cfg.data
  train_ann = d.train_annotations
  train_cats = read_categories(train_ann)
  base = resolve_class_list(d.base_classes, train_cats, train_ann, "data.base_classes", "base")
  if train:
    return base, base
  # a built-in split may name classes the train json lacks: they have no box to train on
  base = [n for n in base if n in {c["name"] for c in train_cats}]
  test_ann = d.test_annotations
  names = resolve_class_list(
      d.test_classes or "all",
      read_categories(test_ann),
      test_ann,
      "data.test_classes",
      "all",
  )
  missing = [n for n in base if n not in names]
  if missing:
    # the detector's training classes are rows of the test vocabulary's embeddings
    raise ValueError(
        f"{__name__}: data.base_classes {missing} are not in the test vocabulary "
        f"({'data.test_classes' if d.get('test_classes', '') else 'the categories of ' + test_ann})"
    )
  return names, base


def _coco(cfg, train: bool):
  """COCO / LVIS-format json + image directory (`data.coco.CocoDetection`): training reads the
  base classes only, testing the test vocabulary (`_coco_classes`). The built-in splits with no
  `data.test_classes` read `<split>_base` / `<split>_all` by name. Bad records follow
  `data.on_error` ("strict" | "skip", `data.validation`); images missing on disk are found
  before anything trains."""
  d = cfg.data
  builtin = d.base_classes in BUILTIN_CLASS_SPLITS and not d.test_classes
  ann = d.train_annotations if train else d.test_annotations
  img = d.train_images if train else d.test_images
  key = "data.train_annotations" if train else "data.test_annotations"
  if not ann or not img:
    raise ValueError(
        f"{__name__}: {key} and data.{'train' if train else 'test'}_images must be set "
        f"(got {ann!r}, {img!r})"
    )
  # reduced-size JPEG decoding down to (not below) the largest resize that follows
  draft = (max(max(d.short_edge_lengths), d.test_size), d.max_size) if d.draft_decode else None
  common = dict(
      policy=d.on_error,
      draft_for=draft,
      check_files=True,
  )
  if builtin:
    prefix = BUILTIN_CLASS_SPLITS[d.base_classes]
    split = f"{prefix}_base" if train else f"{prefix}_all"
    src = CocoDetection(ann, img, split=split, drop_empty=train, **common)
    names = list(src.class_names)
    base = (
        names
        if train
        else CocoDetection(ann, img, split=f"{prefix}_base", drop_empty=False).class_names
    )
  else:
    names, base = _coco_classes(cfg, train)
    src = CocoDetection(ann, img, classes=names, drop_empty=train, **common)
  if len(src) == 0:
    what = "with a box of the training classes" if train else "left to evaluate"
    raise ValueError(
        f"{__name__}: {ann} ({key}) has no image {what} (classes {names[:10]}; "
        f"left out: {dict(src.filtered)}; {src.report() or 'no data issues'})"
    )
  if train:
    # a base class without a single training box trains as background only: say so
    counts = np.bincount(
        np.concatenate([r["labels"] for r in src._records] + [np.zeros(0, np.int32)]),
        minlength=len(names),
    )
    empty = [n for n, k in zip(names, counts) if k == 0]
    if empty and not builtin:
      print(f"[data] warning: no training box of base classes {empty} in {ann}", flush=True)
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
  base = list(base)
  return src, tf, names, base, [n for n in names if n not in base]


def data_for(cfg, train: bool):
  """-> (source, transforms, label names (the records' labels index them), base names, novel
  names)."""
  if cfg.data.name == "shapes_world":
    return _shapes(cfg, train)
  if cfg.data.name == "coco":
    try:
      return _coco(cfg, train)
    except DataError:
      raise
    except (ValueError, FileNotFoundError) as e:
      # the user's files or class lists: one line for main to print, not a traceback
      raise DataError(str(e)) from None
  raise ValueError(f"{__name__}: data.name must be 'shapes_world' or 'coco', got {cfg.data.name!r}")
