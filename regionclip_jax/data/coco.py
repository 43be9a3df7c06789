"""COCO-format detection (instances json + image folder) and COCO Captions, as grain sources.

Splits are chosen by name and matched by category *name*, so a 65-class OVD json, the full
80-class json and LVIS all work: "all" (every category of the json, json order), "coco_ovd_base"
(48), "coco_ovd_novel" (17), "coco_ovd_all" (65), "lvis_base" (common + frequent, 866),
"lvis_rare" (337), "lvis_all" (1203). Labels are contiguous indices into `class_names`;
annotations of categories outside the split are left out (that is what training on base classes
means), and images with no box left are dropped when `drop_empty` (detectron2's training
default). Crowd boxes are left out (detectron2 ignores them in training); both are counted in
`filtered` for the log, not as data issues. Ids, sizes and boxes of the wrong json type (a
string box, a null id) are structural errors naming the record (`data.validation`). An own class
list (`classes`, e.g. from a config's "a,b,c" / "@file.txt" / "all" via `resolve_class_list`)
takes the place of a named split.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from regionclip_jax.data.images import decode_image_and_size, with_original_size
from regionclip_jax.data.class_lists import (
    SPLITS,
    split_class_names,
)
from regionclip_jax.data.validation import (
    IssueCounter,
    as_int,
    as_xywh,
    check_policy,
    describe,
    handle,
    sanitize_boxes,
    sanitize_captions,
)


def load_json(path: str | os.PathLike) -> Any:
  """json.load with one-line errors naming the file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"annotation file not found: {path}")
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not readable json ({e})") from None


def require(entry: Any, keys: Sequence[str], path: str, what: str, index: int) -> None:
  if not isinstance(entry, Mapping):
    raise ValueError(f"{path}: {what} {index} is not an object: {str(entry)[:80]}")
  missing = [k for k in keys if k not in entry]
  if missing:
    raise ValueError(
        f"{path}: {what} {index} (id {entry.get('id')}) lacks required field(s) {missing}"
    )


def int_field(entry: Mapping, key: str, path: str, what: str, index: int) -> int:
  """entry[key] as an int (`as_int`), or a one-line error naming the record."""
  value = as_int(entry[key])
  if value is None:
    raise ValueError(
        f"{path}: {what} {index} (id {describe(entry.get('id'), 30)}) field {key!r} must be an "
        f"integer, got {describe(entry[key])}"
    )
  return value


def _list(data: Mapping, key: str, path: str) -> list:
  if not isinstance(data[key], list):
    raise ValueError(f"{path}: field {key!r} must be a list, got {type(data[key]).__name__}")
  return data[key]


def _image_file(image: Mapping, path: str, index: int) -> str:
  key = "file_name" if "file_name" in image else "coco_url"
  if not isinstance(image[key], str) or not image[key]:
    raise ValueError(
        f"{path}: image {index} (id {image['id']}) field {key!r} must be a non-empty string, "
        f"got {describe(image[key])}"
    )
  if key == "file_name":
    return image[key]
  # LVIS v1 lists coco_url only; its last two parts are e.g. "train2017/000000391895.jpg".
  return "/".join(image["coco_url"].split("/")[-2:])


def read_captions(
    path: str | os.PathLike,
    *,
    policy: str = "skip",
    counter: IssueCounter | None = None,
    data: Mapping | None = None,
) -> dict[int, list[str]]:
  """COCO Captions json -> {image_id: [caption, ...]} (empty captions per `policy`)."""
  path = os.fspath(path)
  data = load_json(path) if data is None else data
  if not isinstance(data, Mapping) or "annotations" not in data:
    raise ValueError(f"{path}: captions json lacks required field 'annotations'")
  out: dict[int, list[str]] = collections.defaultdict(list)
  for i, a in enumerate(_list(data, "annotations", path)):
    require(a, ("image_id", "caption"), path, "annotation", i)
    out[int_field(a, "image_id", path, "annotation", i)] += sanitize_captions(
        [a["caption"]],
        policy=policy,
        counter=counter,
        where=f"{path} annotation {i} (image {a['image_id']})",
    )
  return dict(out)


class CocoDetection:
  """COCO-format instances json + image folder -> records (grain `RandomAccessDataSource`).

  Record: image uint8 [H, W, 3], boxes float32 [K, 4] x1y1x2y2 px, labels int32 [K] (index into
  `class_names`), image_id int, file_name str, and captions list[str] when `captions` (a COCO
  Captions json) is given. `policy`: "strict" raises on a bad box / image; "skip" repairs or drops
  and counts in `self.issues` (see `report()`). A record whose image cannot be read comes back
  as None in skip mode; the pipeline drops it.

  `draft_for` = (short_edge, max_size) of the largest shortest-edge resize that follows (e.g.
  (800, 1333)) lets large JPEGs decode at a reduced size (`data.images`); such records carry
  `orig_size` and boxes in the decoded frame, and the resize transforms end at the same size.

  `classes`: explicit class names (each a category of the json; `resolve_class_list`) instead of
  a named `split`. Per `policy` as well: annotations of a category id the json does not list
  (`unknown_category`) and images whose id an earlier image already has (`duplicate_image_id`,
  the first is kept). Annotation ids are not read: a repeated one changes nothing here (the
  detection job's evaluation numbers its ground truth afresh). `check_files`: images missing on
  disk are found at construction (`missing_image`, dropped in skip mode) instead of when first
  read.
  """

  def __init__(
      self,
      annotations: str | os.PathLike,
      image_dir: str | os.PathLike,
      split: str = "all",
      *,
      captions: str | os.PathLike | None = None,
      policy: str = "strict",
      drop_empty: bool = True,
      counter: IssueCounter | None = None,
      draft_for: tuple[int, int] | None = None,
      classes: Sequence[str] | None = None,
      check_files: bool = False,
  ):
    self.policy = check_policy(policy)
    self.draft_for = draft_for
    if classes is not None and split != "all":
      raise ValueError(f"{__name__}: give split or classes, not both (split={split!r})")
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = os.fspath(annotations)
    self.path, self.image_dir, self.split = path, os.fspath(image_dir), split
    self.issues = counter or IssueCounter(os.path.basename(path))
    data = load_json(path)
    if not isinstance(data, Mapping):
      raise ValueError(f"{path}: top level is not an object")
    for key in ("images", "annotations", "categories"):
      if key not in data:
        raise ValueError(f"{path}: lacks required field {key!r}")
    categories: dict[int, str] = {}
    for i, c in enumerate(_list(data, "categories", path)):
      require(c, ("id", "name"), path, "category", i)
      cid = int_field(c, "id", path, "category", i)
      if not isinstance(c["name"], str) or cid in categories:
        problem = "a name that is not a string" if cid not in categories else "a repeated id"
        raise ValueError(f"{path}: category {i} (id {cid}) has {problem}: {describe(c['name'])}")
      categories[cid] = c["name"]
    # a class the json lacks (a built-in split's) is a label with no box, as with `split`
    self.class_names = (
        list(classes) if classes is not None else split_class_names(split, data["categories"])
    )
    name_to_label = {n: i for i, n in enumerate(self.class_names)}
    cat_to_label = {cid: name_to_label.get(name, -1) for cid, name in categories.items()}
    if (split != "all" or classes is not None) and not any(v >= 0 for v in cat_to_label.values()):
      what = f"split {split!r}" if classes is None else f"classes {list(classes)[:10]}"
      raise ValueError(f"{path}: no category of {what} is in this json (matched by name)")

    images: dict[int, dict] = {}
    for i, im in enumerate(_list(data, "images", path)):
      require(im, ("id", "height", "width"), path, "image", i)
      if "file_name" not in im and "coco_url" not in im:
        raise ValueError(f"{path}: image {i} (id {im['id']}) lacks required field 'file_name'")
      image_id, file = int_field(im, "id", path, "image", i), _image_file(im, path, i)
      height, width = (int_field(im, k, path, "image", i) for k in ("height", "width"))
      if image_id in images:
        # annotations name images by id, so a second image with it makes them ambiguous
        handle(
            policy,
            self.issues,
            "duplicate_image_id",
            f"{path} image {i} (id {image_id}, {file})",
            f"image {images[image_id]['index']} ({images[image_id]['file']}) has the same id; "
            "the first is kept",
        )
        continue
      missing = check_files and not os.path.isfile(os.path.join(self.image_dir, file))
      if missing:
        handle(
            policy,
            self.issues,
            "missing_image",
            f"{path} image {i} (id {image_id}, {file})",
            f"no file {os.path.join(self.image_dir, file)}",
        )
      images[image_id] = {"file": file, "h": height, "w": width, "index": i, "missing": missing}
    per_image: dict[int, list] = collections.defaultdict(list)
    self.filtered: collections.Counter = collections.Counter()
    for i, a in enumerate(_list(data, "annotations", path)):
      require(a, ("image_id", "bbox", "category_id"), path, "annotation", i)
      image_id = int_field(a, "image_id", path, "annotation", i)
      category = int_field(a, "category_id", path, "annotation", i)
      ann_id = describe(a.get("id"), 30)
      xywh = as_xywh(a["bbox"])
      if xywh is None:
        raise ValueError(
            f"{path}: annotation {i} (id {ann_id}) bbox must be [x, y, w, h] numbers, "
            f"got {describe(a['bbox'])}"
        )
      if image_id not in images:
        raise ValueError(
            f"{path}: annotation {i} (id {ann_id}) refers to unknown image {a['image_id']}"
        )
      if category not in cat_to_label:
        handle(
            policy,
            self.issues,
            "unknown_category",
            f"{path} annotation {i} (id {a.get('id')}, image {a['image_id']})",
            f"category_id {a['category_id']} is not among the json's categories "
            f"{sorted(cat_to_label)[:20]}",
        )
        continue
      if a.get("iscrowd", 0):
        self.filtered["crowd"] += 1
        continue
      label = cat_to_label[category]
      if label < 0:
        self.filtered["outside_split"] += 1
        continue
      per_image[image_id].append((i, ann_id, xywh, label))

    caps = read_captions(captions, policy=policy, counter=self.issues) if captions else None
    self._records = []
    for image_id, info in images.items():
      if info["missing"]:
        continue
      anns = per_image.get(image_id, [])
      xywh = np.array([b for _, _, b, _ in anns], np.float64).reshape(-1, 4)
      with np.errstate(over="ignore", invalid="ignore"):  # huge boxes overflow: non-finite, counted
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
      labels = np.array([l for *_, l in anns], np.int32)
      where = f"{path} image {image_id}"
      boxes, labels = sanitize_boxes(
          boxes, labels, info["h"], info["w"], policy=policy, counter=self.issues, where=where
      )
      if drop_empty and len(boxes) == 0:
        self.filtered["image_without_boxes"] += 1
        continue
      rec = {
          "image_id": image_id,
          "file": info["file"],
          "h": info["h"],
          "w": info["w"],
          "boxes": boxes,
          "labels": labels,
      }
      if caps is not None:
        rec["captions"] = caps.get(image_id, [])
      self._records.append(rec)
    self._records.sort(key=lambda r: r["image_id"])

  def __len__(self) -> int:
    return len(self._records)

  def __repr__(self) -> str:
    return (
        f"CocoDetection({self.path!r}, split={self.split!r}, images={len(self)}, "
        f"classes={len(self.class_names)})"
    )

  def __getitem__(self, index: int) -> dict | None:
    r = self._records[index]
    where = f"{self.path} image {r['image_id']} ({r['file']})"
    decoded = decode_image_and_size(
        os.path.join(self.image_dir, r["file"]),
        policy=self.policy,
        counter=self.issues,
        where=where,
        draft_for=self.draft_for,
    )
    if decoded is None:
      return None
    image, full = decoded
    if full != (r["h"], r["w"]):
      # Boxes are in the json's pixel frame; a different size means they would not fit.
      handle(
          self.policy,
          self.issues,
          "image_size_mismatch",
          where,
          f"file is {full[0]}x{full[1]}, json says {r['h']}x{r['w']}",
      )
      return None
    out = {
        "image": image,
        "boxes": r["boxes"].copy(),
        "labels": r["labels"].copy(),
        "image_id": r["image_id"],
        "file_name": r["file"],
    }
    if "captions" in r:
      out["captions"] = list(r["captions"])
    return with_original_size(out, full)

  def report(self) -> str:
    return self.issues.report()


class CocoCaptions:
  """COCO Captions json + image folder -> image-text records (image, captions, image_id).

  Images whose captions are all empty are dropped at construction in skip mode (counted).
  `draft_for`: reduced-size JPEG decoding, as in `CocoDetection`.
  """

  def __init__(
      self,
      captions: str | os.PathLike,
      image_dir: str | os.PathLike,
      *,
      policy: str = "strict",
      counter: IssueCounter | None = None,
      draft_for: tuple[int, int] | None = None,
  ):
    self.policy = check_policy(policy)
    self.draft_for = draft_for
    path = os.fspath(captions)
    self.path, self.image_dir = path, os.fspath(image_dir)
    self.issues = counter or IssueCounter(os.path.basename(path))
    data = load_json(path)
    if not isinstance(data, Mapping) or "images" not in data:
      raise ValueError(f"{path}: lacks required field 'images'")
    caps = read_captions(path, policy=policy, counter=self.issues, data=data)
    self._records = []
    for i, im in enumerate(_list(data, "images", path)):
      require(im, ("id", "file_name"), path, "image", i)
      image_id, file = int_field(im, "id", path, "image", i), _image_file(im, path, i)
      c = caps.get(image_id, [])
      if not c:
        handle(policy, self.issues, "image_without_captions", f"{path} image {image_id}")
        continue
      self._records.append((image_id, file, c))

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict | None:
    image_id, file, captions = self._records[index]
    decoded = decode_image_and_size(
        os.path.join(self.image_dir, file),
        policy=self.policy,
        counter=self.issues,
        where=f"{self.path} image {image_id} ({file})",
        draft_for=self.draft_for,
    )
    if decoded is None:
      return None
    record = {"image": decoded[0], "captions": list(captions), "image_id": image_id}
    return with_original_size(record, decoded[1])

  def report(self) -> str:
    return self.issues.report()
