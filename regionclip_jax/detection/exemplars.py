"""Exemplar classes: a class given by a few boxes on example images instead of, or with, its name.

File format (json; `file` paths relative to the json's folder unless absolute; boxes x0, y0, x1,
y1 in the image's own pixels; `text_weight` optional, default 0):

  {"classes": [
    {"name": "my cat", "text_weight": 0.0,
     "images": [{"file": "cat.jpg", "boxes": [[60, 10, 380, 290]]}]}
  ]}

A class's embedding [D] is the normalised mean of the L2-normalised region embeddings of all its
boxes, computed by the detector's own region path on the image preprocessed as for detection
(for a CLIP checkpoint the pretrained one: RoIAlign on res4 -> layer4 -> attnpool; for an export,
its fine-tuned backbone). With `text_weight` w > 0 it becomes normalise((1 - w) * exemplar + w *
text), text the normalised text embedding of the class name. `vocabulary_with_exemplars` merges
exemplar classes into a text vocabulary: one named like a text class replaces that class's
embedding in place, the others join at the end.

Every problem in the file (unknown key, empty class, missing or unreadable image, a box that is
non-finite, of zero area or outside its image) raises `ExemplarError`, one line naming the json,
the class and the record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from regionclip_jax.data.validation import DataError

_CLASS_KEYS = {"name", "images", "text_weight"}
_IMAGE_KEYS = {"file", "boxes"}
# float slop at the border, as in data.validation.sanitize_boxes
_BORDER_TOL = 1e-3


class ExemplarError(DataError):
  """A bad exemplar file or record (one line: json, class, record)."""


@dataclasses.dataclass(frozen=True, eq=False)  # holds an array: compared by identity
class ExemplarImage:
  path: str  # absolute, or relative to the working directory
  boxes: np.ndarray  # [B, 4] x0 y0 x1 y1, original pixels
  where: str  # "<json>: class i ('name') image j (file)" for errors


@dataclasses.dataclass(frozen=True)
class ExemplarClass:
  name: str
  images: tuple[ExemplarImage, ...]
  text_weight: float = 0.0
  where: str = ""

  @property
  def num_boxes(self) -> int:
    return sum(len(im.boxes) for im in self.images)


def _keys(entry, allowed: set, where: str, what: str) -> None:
  if not isinstance(entry, dict):
    raise ExemplarError(f"{where}: {what} must be a json object, got {type(entry).__name__}")
  unknown = sorted(set(entry) - allowed)
  if unknown:
    raise ExemplarError(f"{where}: unknown key(s) {unknown}; allowed {sorted(allowed)}")


def _image_size(path: str, where: str) -> tuple[int, int]:
  """(height, width) from the file's header."""
  if not os.path.isfile(path):
    raise ExemplarError(f"{where}: no file {path}")
  try:
    with Image.open(path) as im:
      return im.height, im.width
  except Exception as e:  # PIL raises many types for non-images
    raise ExemplarError(f"{where}: unreadable image ({type(e).__name__}: {e})"[:300]) from None


def _finite(v) -> bool:
  try:
    return math.isfinite(v)
  except OverflowError:  # an int beyond any float
    return False


def _boxes(raw, height: int, width: int, where: str) -> np.ndarray:
  if not isinstance(raw, list) or not raw:
    raise ExemplarError(f"{where}: 'boxes' must be a non-empty list of [x0, y0, x1, y1]")
  for k, b in enumerate(raw):
    at = f"{where} box {k}"
    ok = isinstance(b, list) and len(b) == 4
    if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b):
      raise ExemplarError(f"{at}: expected 4 numbers [x0, y0, x1, y1], got {b!r}"[:300])
    if not all(_finite(v) for v in b):
      raise ExemplarError(f"{at}: non-finite box {str(b)[:80]}")
    x0, y0, x1, y1 = (float(v) for v in b)
    if x1 <= x0 or y1 <= y0:
      raise ExemplarError(f"{at}: zero-area box {b} (need x1 > x0, y1 > y0)")
    t = _BORDER_TOL
    if x0 < -t or y0 < -t or x1 > width + t or y1 > height + t:
      raise ExemplarError(f"{at}: box {b} outside the image ({width}x{height})")
  return np.clip(np.asarray(raw, np.float32), 0, [width, height, width, height])


def read_exemplars(path: str) -> list[ExemplarClass]:
  """The exemplar json at `path` -> its classes, every record checked (module docstring)."""
  if not os.path.isfile(path):
    raise ExemplarError(f"exemplars: no file {path}")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ExemplarError(f"{path}: not readable json ({e})") from None
  _keys(data, {"classes"}, path, "the top level")
  if not isinstance(data.get("classes"), list) or not data["classes"]:
    raise ExemplarError(f"{path}: 'classes' must be a non-empty list")
  root = os.path.dirname(os.path.abspath(path))
  out, seen = [], set()
  for i, c in enumerate(data["classes"]):
    name = c.get("name") if isinstance(c, dict) else None
    where = f"{path}: class {i} ({name!r})"
    _keys(c, _CLASS_KEYS, where, "a class")
    if not isinstance(name, str) or not name.strip():
      raise ExemplarError(f"{where}: 'name' must be a non-empty string")
    name = name.strip()
    if name in seen:
      raise ExemplarError(f"{where}: a class of this name comes earlier in the file")
    seen.add(name)
    w = c.get("text_weight", 0.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
      raise ExemplarError(f"{where}: 'text_weight' must be a number in [0, 1], got {w!r}")
    images = c.get("images")
    if not isinstance(images, list) or not images:
      raise ExemplarError(f"{where}: empty class; 'images' must list at least one image")
    ims = []
    for j, im in enumerate(images):
      file = im.get("file") if isinstance(im, dict) else None
      at = f"{where} image {j} ({file})"
      _keys(im, _IMAGE_KEYS, at, "an image")
      if not isinstance(file, str) or not file:
        raise ExemplarError(f"{at}: 'file' must be a non-empty string")
      full = os.path.join(root, file)
      h, w_ = _image_size(full, at)
      ims.append(ExemplarImage(full, _boxes(im.get("boxes"), h, w_, at), at))
    out.append(ExemplarClass(name, tuple(ims), float(w), where))
  return out


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def region_embeddings(detector, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """uint8 image [H, W, 3], boxes [B, 4] original pixels -> unit region embeddings [B, D], by
  the region path `detector` (a `ZeroShotDetector`) scores its detections with."""
  x, _, (sy, sx) = detector.preprocess(image)
  b = np.asarray(boxes, np.float32).reshape(-1, 4) * np.asarray([sx, sy, sx, sy], np.float32)
  n = len(b)
  # pad to a multiple of 8 boxes so that a handful of box counts share one compiled program
  b = np.concatenate([b, np.repeat(b[:1], -(-n // 8) * 8 - n, 0)])
  feats, _ = detector.predictor.region_outputs(x, b[None])
  return _unit(np.asarray(feats, np.float32)[0, :n])


def _decode(im: ExemplarImage) -> np.ndarray:
  try:
    with Image.open(im.path) as pil:
      return np.asarray(pil.convert("RGB"))
  except Exception as e:  # a header that opened but a body that does not decode
    raise ExemplarError(f"{im.where}: unreadable image ({type(e).__name__}: {e})"[:300]) from None


def class_embedding(detector, cls: ExemplarClass, text: Optional[np.ndarray] = None) -> np.ndarray:
  """[D] unit embedding of `cls`; `text` [D] (any norm) is mixed in by `cls.text_weight`."""
  feats = np.concatenate([region_embeddings(detector, _decode(im), im.boxes) for im in cls.images])
  e = _unit(feats.mean(0))
  if cls.text_weight > 0:
    if text is None:
      raise ExemplarError(f"{cls.where}: text_weight > 0 needs the class's text embedding")
    e = _unit((1.0 - cls.text_weight) * e + cls.text_weight * _unit(np.asarray(text, np.float32)))
  return e.astype(np.float32)


def vocabulary_with_exemplars(
    detector, names: Sequence[str], classes: Sequence[ExemplarClass], embeddings: str = ""
) -> tuple[list[str], np.ndarray]:
  """Text classes `names` [K0] + exemplar `classes` -> (names [K], embeddings [K, D]).

  Text rows come from `detector.text_embeddings(names, embeddings)`; an exemplar class named like
  a text class takes its row (mixing in that row's text by its weight), the others are appended
  (their text, when weighted, from the detector's text tower)."""
  names = list(names)
  dim = detector.clip_config.embed_dim
  rows = list(detector.text_embeddings(names, embeddings)) if names else []
  for c in classes:
    known = c.name in names
    text = None
    if c.text_weight > 0:
      if known:
        text = rows[names.index(c.name)]
      else:
        try:
          text = detector.text_embeddings([c.name])[0]
        except ValueError as e:
          raise ExemplarError(f"{c.where}: text_weight > 0: {e}") from None
    e = class_embedding(detector, c, text)
    if known:
      rows[names.index(c.name)] = e
    else:
      names.append(c.name)
      rows.append(e)
  emb = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
  return names, emb
