"""The records `tools.extract_region_features` runs on, checked one by one: images of a folder,
a json of boxes per image, or a COCO json's images and GT boxes. A bad record is `Refused` with
its kind; `Issues` applies `--on_error` (strict: one line naming it; skip: a warning and a count).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from regionclip_jax.data.validation import DataError, IssueCounter, handle
from regionclip_jax.tools.zero_shot_inputs import IMAGE_EXTS

NAME = "extract_region_features"
_SLOP = 1.0  # px a given box may stick out of its image (rounding in other tools' outputs)
_SKIP_HINT = "--on_error=skip skips bad records and counts them"


@dataclasses.dataclass
class Record:
  where: str  # names the record in messages
  path: str
  stem: str
  boxes: Optional[np.ndarray] = None  # [R,4] float64 x0 y0 x1 y1 original px; None = RPN
  extra: dict = dataclasses.field(default_factory=dict)  # per-box arrays [R] saved as given


class Refused(Exception):
  """A bad record: `kind` (the counted category) and a detail."""

  def __init__(self, kind: str, detail: str = ""):
    super().__init__(f"{kind}: {detail}" if detail else kind)
    self.kind, self.detail = kind, detail


class Issues:
  """Bad-record policy: "strict" raises a one-line DataError; "skip" warns and counts."""

  def __init__(self, policy: str):
    if policy not in ("skip", "strict"):
      raise ValueError(f"{NAME}: on_error must be 'skip' or 'strict', got {policy!r}")
    self.policy = policy
    # every skipped record is printed as it happens (a folder run's per-file warnings)
    self.counter = IssueCounter(NAME, warn=self._warn, warn_first=sys.maxsize)

  @staticmethod
  def _warn(message: str) -> None:
    print(f"{NAME}: skipped {message}", file=sys.stderr, flush=True)

  def __call__(self, kind: str, where: str, detail: str = "") -> None:
    handle(self.policy, self.counter, kind, where, detail, hint=_SKIP_HINT)


def _box_array(raw, xywh: bool = False, labels: Optional[Sequence[str]] = None) -> np.ndarray:
  """A json list of [4] numbers -> [R,4] float64 x0 y0 x1 y1 (from x y w h with `xywh`);
  Refused for anything else, naming the box by `labels[i]` (default "box i")."""
  if not isinstance(raw, list):
    raise Refused("bad_boxes", f"expected a list of [x0, y0, x1, y1], got {type(raw).__name__}")
  name = (lambda i: labels[i]) if labels else (lambda i: f"box {i}")
  for i, b in enumerate(raw):
    ok = isinstance(b, list) and len(b) == 4
    if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b):
      raise Refused("bad_boxes", f"{name(i)} is {json.dumps(b)[:60]}, not four numbers")
  a = np.asarray(raw, np.float64).reshape(-1, 4)
  for i in np.nonzero(~np.isfinite(a).all(1))[0]:
    raise Refused("non_finite_box", f"{name(i)} {raw[i]}")
  if xywh:
    a = np.concatenate([a[:, :2], a[:, :2] + a[:, 2:]], 1)
  for i in np.nonzero((a[:, 2] < a[:, 0]) | (a[:, 3] < a[:, 1]))[0]:
    raise Refused("negative_size_box", f"{name(i)} {raw[i]}")
  return a


def check_inside(boxes: np.ndarray, h: int, w: int) -> None:
  lo, hi = -_SLOP, np.asarray([w, h, w, h]) + _SLOP
  for i in np.nonzero(((boxes < lo) | (boxes > hi)).any(1))[0]:
    raise Refused("box_outside_image", f"box {i} {boxes[i].tolist()} vs image {w}x{h}")


def _load_json(path: str):
  """-> the json; lists of key/value pairs for objects (duplicate keys stay visible)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f, object_pairs_hook=_Pairs)
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: unreadable json: {e}") from None


class _Pairs(list):
  """A json object as its (key, value) pairs."""

  def get(self, key, default=None):
    return next((v for k, v in self if k == key), default)


class _Names:
  """Refuses a second record of an image or of an output file name."""

  def __init__(self):
    self.ids, self.stems = set(), set()

  def take(self, file_name: str, ident=None) -> str:
    """-> the output stem; Refused for a repeated id, file name or stem."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    for key in (("id", ident), ("file", file_name)):
      if key[1] is not None and key in self.ids:
        raise Refused("duplicate_image", f"{key[0]} {key[1]!r} listed before")
    if stem in self.stems:
      raise Refused("duplicate_output_name", f"{stem}.npz is another image's output")
    self.ids.update((("id", ident), ("file", file_name)))
    self.stems.add(stem)
    return stem


def folder_records(images: str, issues: Issues, limit: int = 0) -> tuple[list[Record], int]:
  """The image files of `images` (sorted; the first `limit`, 0 = all) -> (records, number of
  other files ignored)."""
  if not os.path.isdir(images):
    raise DataError(f"{NAME}: --images={images!r} is not a folder")
  files = sorted(os.listdir(images))
  names, out = _Names(), []
  for f in [f for f in files if f.lower().endswith(IMAGE_EXTS)][: limit or None]:
    try:
      out.append(Record(f, os.path.join(images, f), names.take(f)))
    except Refused as r:
      issues(r.kind, f, r.detail)
  return out, sum(not f.lower().endswith(IMAGE_EXTS) for f in files)


def boxes_records(path: str, images: str, issues: Issues, limit: int = 0) -> list[Record]:
  """A json of boxes per image (module docstring; its first `limit` entries, 0 = all) ->
  records, bad ones refused."""
  data = _load_json(path)
  if isinstance(data, _Pairs):
    items = [(f"{path}: {k!r}", k, v, None) for k, v in data]
  elif isinstance(data, list):
    items = []
    for i, r in enumerate(data):
      fn = r.get("file_name") if isinstance(r, _Pairs) else None
      ident = r.get("id") if isinstance(r, _Pairs) else None
      boxes = r.get("boxes") if isinstance(r, _Pairs) else None
      items.append((f"{path} record {i} ({fn})", fn, boxes, _hashable(ident)))
  else:
    raise DataError(f"{path}: expected an object {{file_name: boxes}} or a list of records")
  names, out = _Names(), []
  for where, fn, boxes, ident in items[: limit or None]:
    try:
      if not isinstance(fn, str) or not fn:
        raise Refused("bad_record", "no file_name string")
      stem = names.take(fn, ident)  # a repeated id or name is refused whatever its boxes
      out.append(Record(where, os.path.join(images, fn), stem, _box_array(boxes)))
    except Refused as r:
      issues(r.kind, where, r.detail)
  return out


def _hashable(v):
  return json.dumps(v) if isinstance(v, list) else v


def coco_records(
    path: str, images: str, with_boxes: bool, issues: Issues, limit: int = 0
) -> list[Record]:
  """A COCO json's images (the first `limit`, 0 = all; with `with_boxes`, their annotations'
  boxes, ids and categories)."""
  data = _load_json(path)
  imgs = data.get("images") if isinstance(data, _Pairs) else None
  anns = (data.get("annotations") or []) if isinstance(data, _Pairs) else None
  if not isinstance(imgs, list) or not isinstance(anns, list):
    raise DataError(f"{path}: not a COCO json (needs 'images' and 'annotations' lists)")
  by_image: dict = {}
  for a in anns:
    if isinstance(a, _Pairs):
      by_image.setdefault(_hashable(a.get("image_id")), []).append(a)
  names, out = _Names(), []
  for i, im in enumerate(imgs[: limit or None]):
    fn = im.get("file_name") if isinstance(im, _Pairs) else None
    ident = _hashable(im.get("id")) if isinstance(im, _Pairs) else None
    where = f"{path} image {ident} ({fn})"
    try:
      if not isinstance(fn, str) or not fn or ident is None:
        raise Refused("bad_record", f"images[{i}] needs an id and a file_name")
      rec = Record(where, os.path.join(images, fn), names.take(fn, ident))
      if with_boxes:
        mine = by_image.get(ident, [])
        labels = [f"annotation {a.get('id')} bbox" for a in mine]
        rec.boxes = _box_array([a.get("bbox") for a in mine], xywh=True, labels=labels)
        rec.extra = {
            "ann_ids": _int_column(mine, "id"),
            "category_ids": _int_column(mine, "category_id"),
        }
      out.append(rec)
    except Refused as r:
      issues(r.kind, where, r.detail)
  return out


def _int_column(anns, key: str) -> np.ndarray:
  vals = [a.get(key) for a in anns]
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
    raise Refused("bad_record", f"annotation {key} values must be integers")
  return np.asarray(vals, np.int64).reshape(-1)


# ----------------------------------------------------------------------------- job
