"""COCO-format detection (instances json + image folder) and COCO Captions, as grain sources.

Splits are chosen by name and matched by category *name*, so a 65-class OVD json, the full
80-class json and LVIS all work: "all" (every category of the json, json order), "coco_ovd_base"
(48), "coco_ovd_novel" (17), "coco_ovd_all" (65), "lvis_base" (common + frequent, 866),
"lvis_rare" (337), "lvis_all" (1203). Labels are contiguous indices into `class_names`;
annotations of categories outside the split are left out (that is what training on base classes
means), and images with no box left are dropped when `drop_empty` (detectron2's training
default). Crowd boxes are left out (detectron2 ignores them in training); both are counted in
`filtered` for the log, not as data issues. An own class list (`classes`, e.g. from a config's
"a,b,c" / "@file.txt" / "all" via `resolve_class_list`) takes the place of a named split.
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
    check_policy,
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


def _image_file(image: Mapping) -> str:
  if "file_name" in image:
    return image["file_name"]
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
  for i, a in enumerate(data["annotations"]):
    require(a, ("image_id", "caption"), path, "annotation", i)
    out[int(a["image_id"])] += sanitize_captions(
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
  the first is kept). `check_files`: images missing on disk are found at construction
  (`missing_image`, dropped in skip mode) instead of when first read.
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
    for i, c in enumerate(data["categories"]):
      require(c, ("id", "name"), path, "category", i)
    # a class the json lacks (a built-in split's) is a label with no box, as with `split`
    self.class_names = (
        list(classes) if classes is not None else split_class_names(split, data["categories"])
    )
    name_to_label = {n: i for i, n in enumerate(self.class_names)}
    cat_to_label = {int(c["id"]): name_to_label.get(c["name"], -1) for c in data["categories"]}
    if (split != "all" or classes is not None) and not any(v >= 0 for v in cat_to_label.values()):
      what = f"split {split!r}" if classes is None else f"classes {list(classes)[:10]}"
      raise ValueError(f"{path}: no category of {what} is in this json (matched by name)")

    images: dict[int, dict] = {}
    for i, im in enumerate(data["images"]):
      require(im, ("id", "height", "width"), path, "image", i)
      if "file_name" not in im and "coco_url" not in im:
        raise ValueError(f"{path}: image {i} (id {im['id']}) lacks required field 'file_name'")
      image_id, file = int(im["id"]), _image_file(im)
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
      images[image_id] = {
          "file": file,
          "h": int(im["height"]),
          "w": int(im["width"]),
          "index": i,
          "missing": missing,
      }
    per_image: dict[int, list] = collections.defaultdict(list)
    self.filtered: collections.Counter = collections.Counter()
    for i, a in enumerate(data["annotations"]):
      require(a, ("image_id", "bbox", "category_id"), path, "annotation", i)
      if int(a["image_id"]) not in images:
        raise ValueError(
            f"{path}: annotation {i} (id {a.get('id')}) refers to unknown image {a['image_id']}"
        )
      if int(a["category_id"]) not in cat_to_label:
        handle(
            policy,
            self.issues,
            "unknown_category",
            f"{path} annotation {i} (id {a.get('id')}, image {a['image_id']})",
            f"category_id {a['category_id']} is not among the json's categories "
            f"{sorted(cat_to_label)[:20]}",
        )
        continue
      bbox = a["bbox"]
      if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(
            f"{path}: annotation {i} (id {a.get('id')}) bbox must be [x, y, w, h], got {bbox!r}"
        )
      if a.get("iscrowd", 0):
        self.filtered["crowd"] += 1
        continue
      label = cat_to_label[int(a["category_id"])]
      if label < 0:
        self.filtered["outside_split"] += 1
        continue
      per_image[int(a["image_id"])].append((i, a.get("id"), bbox, label))

    caps = read_captions(captions, policy=policy, counter=self.issues) if captions else None
    self._records = []
    for image_id, info in images.items():
      if info["missing"]:
        continue
      anns = per_image.get(image_id, [])
      xywh = np.array([b for _, _, b, _ in anns], np.float64).reshape(-1, 4)
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
    return f"CocoDetection({self.path!r}, split={self.split!r}, images={len(self)}, classes={len(self.class_names)})"

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
    for i, im in enumerate(data["images"]):
      require(im, ("id", "file_name"), path, "image", i)
      c = caps.get(int(im["id"]), [])
      if not c:
        handle(policy, self.issues, "image_without_captions", f"{path} image {im['id']}")
        continue
      self._records.append((int(im["id"]), im["file_name"], c))

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
