"""Per-record transforms (grain `Map` / `RandomMap`), detectron2 semantics, static output shapes.

A record is a dict of numpy arrays (see `regionclip_jax.data`). Geometry transforms keep
`image` uint8 [H, W, 3] and `boxes` float32 [K, 4] (x1, y1, x2, y2 px) consistent; the final
`NormalizeAndPad` + `PadBoxes` give static shapes: `image` float32 [S, S, 3] CLIP-normalised,
`image_mask` bool [S, S], `image_size` int32 [2] (valid h, w), `boxes` [B, 4], `box_mask` [B],
`labels` [B] (-1 where padded). Random transforms take the per-record generator that grain derives
from (seed, index), so a record's augmentation does not depend on thread timing or resume point.

At accelerator rates (the real presets): `normalize=False` keeps batches uint8 (4x fewer bytes
to pad, batch, move between processes and send; normalise in the jitted step with
`normalize_on_device`), `backend="cv2"` resizes ~10x faster than PIL within the tolerances of
`resize_image`, and a source's `draft_for` decodes large JPEGs at a reduced size; records so
decoded carry `orig_size`, which the resize transforms use so that output sizes do not change.
"""

from __future__ import annotations

from typing import Callable, Sequence

import grain
import jax.numpy as jnp
import numpy as np

# The geometric transforms live in geometry.py; they are re-exported here so that a recipe reads
# from one namespace (`T.ResizeShortestEdge`, ...). shortest_edge_size lives with the decoder
# (draft sizes follow the same rule).
from regionclip_jax.data.geometry import (  # noqa: F401 - re-exported
    LargeScaleJitter,
    RandomFlip,
    ResizeShortestEdge,
    hflip,
    resize_image,
)
from regionclip_jax.data.images import shortest_edge_size  # noqa: F401 - re-exported
from regionclip_jax.data.validation import IssueCounter, check_policy, handle
from regionclip_jax.models.clip_model import CLIP_MEAN, CLIP_STD
from regionclip_jax.models.tokenizer import tokenize


class NormalizeAndPad(grain.transforms.Map):
  """uint8 [h, w, 3] -> float32 [H, W, 3] CLIP-normalised, zero-padded bottom/right (zero is the
  mean colour after normalisation); adds `image_mask` bool [H, W] and `image_size` int32 [2].

  normalize=False keeps the padded image uint8 (4x fewer bytes to copy, batch and send to the
  device; at 1344 px that is the difference between a memory-bound and a decode-bound input
  pipeline): normalise on the device with `normalize_on_device`.
  """

  def __init__(
      self,
      pad_size: int | tuple[int, int],
      mean: Sequence[float] = CLIP_MEAN,
      std: Sequence[float] = CLIP_STD,
      normalize: bool = True,
  ):
    self.pad_h, self.pad_w = (pad_size, pad_size) if isinstance(pad_size, int) else tuple(pad_size)
    self.mean = np.asarray(mean, np.float32) * 255
    self.inv_std = 1.0 / (np.asarray(std, np.float32) * 255)
    self.normalize = normalize

  def map(self, record: dict) -> dict:
    record = dict(record)
    image = record["image"]
    h, w = image.shape[:2]
    if h > self.pad_h or w > self.pad_w:
      raise ValueError(
          f"NormalizeAndPad: image {h}x{w} (image_id {record.get('image_id')}) is larger than "
          f"pad size {self.pad_h}x{self.pad_w}; raise pad_size or lower the resize max_size"
      )
    if self.normalize:
      out = np.zeros((self.pad_h, self.pad_w, 3), np.float32)
      valid = out[:h, :w]
      np.subtract(image, self.mean, out=valid, dtype=np.float32)
      valid *= self.inv_std
    else:
      out = np.zeros((self.pad_h, self.pad_w, 3), np.uint8)
      out[:h, :w] = image
    mask = np.zeros((self.pad_h, self.pad_w), bool)
    mask[:h, :w] = True
    record["image"], record["image_mask"] = out, mask
    record["image_size"] = np.array([h, w], np.int32)
    return record


def normalize_on_device(
    images,
    image_mask,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    dtype=None,
):
  """uint8 [N, H, W, 3] + mask [N, H, W] -> CLIP-normalised [N, H, W, 3] with padding at 0 (jit-able),
  equal to what `NormalizeAndPad(normalize=True)` produces on the host (to 1e-5; that and this
  multiply by 1 / (255 std), `models.clip.normalize_images` divides, and is numpy, not jit-able)."""
  dtype = dtype or jnp.float32
  mean = jnp.asarray(mean, jnp.float32) * 255
  inv_std = 1.0 / (jnp.asarray(std, jnp.float32) * 255)
  x = (images.astype(jnp.float32) - mean) * inv_std
  return jnp.where(image_mask[..., None], x, 0).astype(dtype)


def normalize_batch(batch: dict) -> dict:
  """The first thing every jitted step does with its batch: a uint8 `image` [N, H, W, 3] (host
  pipelines with `normalize=False`) is CLIP-normalised here, on the device, with the padding
  beyond `image_size` [N, 2] (valid h, w) at 0 as on the host; a float `image` (host-normalised)
  is returned untouched, so one step serves both kinds of pipeline. The branch is on the dtype,
  which is static under jit."""
  images = batch["image"]
  if images.dtype != jnp.uint8:
    return batch
  h, w = images.shape[1:3]
  size = jnp.asarray(batch["image_size"])
  mask = (jnp.arange(h)[None, :, None] < size[:, 0, None, None]) & (
      jnp.arange(w)[None, None, :] < size[:, 1, None, None]
  )
  return {**batch, "image": normalize_on_device(images, mask)}


class PadBoxes(grain.transforms.Map):
  """boxes [K, 4] / labels [K] -> [max_boxes, 4] / [max_boxes] (label -1 when padded) + box_mask.

  More than `max_boxes` boxes: `strict` raises; `skip` keeps the first `max_boxes` and counts the
  dropped ones ("boxes_over_max") in `counter`.
  """

  def __init__(
      self,
      max_boxes: int,
      policy: str = "strict",
      counter: IssueCounter | None = None,
      extra_keys: Sequence[str] = (),
  ):
    self.max_boxes = int(max_boxes)
    self.policy = check_policy(policy)
    self.counter = counter
    self.extra_keys = tuple(extra_keys)  # other per-box int arrays to pad with -1 (e.g. colors)

  def map(self, record: dict) -> dict:
    record = dict(record)
    boxes = np.asarray(record.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
    k = len(boxes)
    if k > self.max_boxes:
      handle(
          self.policy,
          self.counter,
          "boxes_over_max",
          f"image_id {record.get('image_id')}",
          f"{k} boxes > max_boxes {self.max_boxes}",
      )
      k = self.max_boxes
    out = np.zeros((self.max_boxes, 4), np.float32)
    out[:k] = boxes[:k]
    record["boxes"] = out
    record["box_mask"] = np.arange(self.max_boxes) < k
    for key in ("labels",) + self.extra_keys:
      vals = np.asarray(record.get(key, np.zeros((0,), np.int32)), np.int32).reshape(-1)
      padded = np.full((self.max_boxes,), -1, np.int32)
      padded[:k] = vals[:k]
      record[key] = padded
    return record


class SelectCaption(grain.transforms.RandomMap):
  """`captions` list[str] -> `caption` str: one drawn at random (official), or the first."""

  def __init__(self, random: bool = True):
    self.random = random

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    captions = record.get("captions") or []
    if not captions:
      raise ValueError(f"SelectCaption: record image_id {record.get('image_id')} has no captions")
    record = dict(record)
    record["caption"] = captions[int(rng.integers(len(captions)))] if self.random else captions[0]
    return record


def _default_tokenize(texts, context_length=77):
  return tokenize(texts, context_length=context_length)


class TokenizeCaption(grain.transforms.Map):
  """`caption` str -> `caption_tokens` int32 [context_length] (OpenAI ids by default)."""

  def __init__(self, tokenize_fn: Callable | None = None, context_length: int = 77):
    self.tokenize_fn = tokenize_fn or _default_tokenize
    self.context_length = context_length

  def map(self, record: dict) -> dict:
    record = dict(record)
    tokens = np.asarray(
        self.tokenize_fn([record["caption"]], context_length=self.context_length), np.int32
    )
    record["caption_tokens"] = tokens.reshape(-1)[: self.context_length]
    return record


class KeepKeys(grain.transforms.Map):
  """Drops every key not listed (strings and ragged lists cannot be batched)."""

  def __init__(self, keys: Sequence[str]):
    self.keys = tuple(keys)

  def map(self, record: dict) -> dict:
    missing = [k for k in self.keys if k not in record]
    if missing:
      raise KeyError(
          f"KeepKeys: record image_id {record.get('image_id')} lacks {missing}; has {sorted(record)}"
      )
    return {k: record[k] for k in self.keys}


def apply_transforms(
    record: dict, transforms: Sequence, rng: np.random.Generator | None = None
) -> dict | None:
  """Runs transforms on one record outside grain (tests, demos); None passes through."""
  rng = rng or np.random.default_rng(0)
  for t in transforms:
    if record is None:
      return None
    if isinstance(t, grain.transforms.RandomMap):
      record = t.random_map(record, rng)
    elif isinstance(t, grain.transforms.Map):
      record = t.map(record)
    else:
      record = t(record)
  return record


# -- recipes -----------------------------------------------------------------------------------

DETECTION_KEYS = ("image", "image_mask", "image_size", "boxes", "box_mask", "labels", "image_id")
PRETRAIN_KEYS = ("image", "image_mask", "image_size", "caption_tokens", "image_id")


def detection_transforms(
    *,
    train: bool,
    short_edge_lengths=(640, 672, 704, 736, 768, 800),
    test_size: int = 800,
    max_size: int = 1333,
    pad_size: int | None = None,
    max_boxes: int = 100,
    flip: bool = True,
    interpolation: str = "bilinear",
    lsj: tuple[float, float] | None = None,
    policy: str = "strict",
    counter: IssueCounter | None = None,
    normalize: bool = True,
    backend: str = "pil",
) -> list:
  """Faster R-CNN recipe: multi-scale (train) / fixed (test) shortest-edge resize or LSJ, flip,
  normalise (or keep uint8: `normalize=False`), pad to `pad_size` (default `max_size` rounded up
  to 32), pad boxes."""
  pad = pad_size or -(-max_size // 32) * 32
  if lsj is not None:
    geo = (
        [LargeScaleJitter(pad, lsj[0], lsj[1], interpolation, backend)]
        if train
        else [ResizeShortestEdge(test_size, pad, interpolation=interpolation, backend=backend)]
    )
  else:
    geo = [
        ResizeShortestEdge(
            short_edge_lengths if train else test_size,
            max_size,
            interpolation=interpolation,
            backend=backend,
        )
    ]
  if train and flip:
    geo.append(RandomFlip())
  return geo + [
      NormalizeAndPad(pad, normalize=normalize),
      PadBoxes(max_boxes, policy, counter),
      KeepKeys(DETECTION_KEYS),
  ]


def pretrain_transforms(
    *,
    short_edge_lengths=(640, 672, 704, 736, 768, 800),
    max_size: int = 1333,
    pad_size: int | None = None,
    flip: bool = True,
    interpolation: str = "bicubic",
    tokenize_fn: Callable | None = None,
    random_caption: bool = True,
    keep_boxes: int = 0,
    normalize: bool = True,
    backend: str = "pil",
) -> list:
  """Official pretraining recipe: shorter side from 640-800 (bicubic, max 1333), random flip,
  one random caption tokenised. `keep_boxes` > 0 also pads boxes (shapes-world evaluation)."""
  pad = pad_size or -(-max_size // 32) * 32
  out = [
      ResizeShortestEdge(short_edge_lengths, max_size, interpolation=interpolation, backend=backend)
  ]
  if flip:
    out.append(RandomFlip())
  out += [
      NormalizeAndPad(pad, normalize=normalize),
      SelectCaption(random_caption),
      TokenizeCaption(tokenize_fn),
  ]
  keys = PRETRAIN_KEYS
  if keep_boxes:
    out.append(PadBoxes(keep_boxes))
    keys = keys + ("boxes", "box_mask", "labels")
  return out + [KeepKeys(keys)]


def shapes_world_transforms(
    *,
    image_size: int = 64,
    max_boxes: int = 8,
    flip: bool = False,
    tokenize_fn: Callable | None = None,
    random_caption: bool = True,
    captions: bool = True,
) -> list:
  """Shapes world at its native size: normalise (no resize), pad boxes, optionally tokenise."""
  out: list = [RandomFlip()] if flip else []
  out += [NormalizeAndPad(image_size), PadBoxes(max_boxes)]
  keys = DETECTION_KEYS
  if captions:
    out += [SelectCaption(random_caption), TokenizeCaption(tokenize_fn)]
    keys = keys + ("caption_tokens",)
  return out + [KeepKeys(keys)]
