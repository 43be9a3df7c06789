"""TFDS datasets through `tfds.data_source` (array_record, read without TensorFlow).

Detection (`TfdsDetection`), for a dataset the user prepared with `file_format="array_record"`,
e.g. `coco/2017`: image [H, W, 3], objects/bbox (normalised ymin, xmin, ymax, xmax),
objects/label (ClassLabel), objects/is_crowd, image/id. Records come out in our format (pixel
x1y1x2y2 boxes, labels indexing `class_names` of the chosen class split, matched by name), with
the same strict | skip policy for bad boxes as the json sources. Keys are configurable for other
datasets of this shape.

Image-text (`TfdsImageText`), e.g. `coco_captions`: an image feature and a text feature (one
string or a sequence of them; "captions/text" walks into the nested sequence of TFDS
coco_captions) -> pretraining records (image, captions, image_id = index).
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from regionclip_jax.data.class_lists import SPLITS, split_class_names
from regionclip_jax.data.images import decode_image_and_size
from regionclip_jax.data.validation import (
    IssueCounter,
    check_policy,
    handle,
    sanitize_boxes,
    sanitize_captions,
)


def _norm(name: str) -> str:
  return name.replace("_", " ").strip().lower()


def _open(name: str, split: str, data_dir: str | None):
  """`tfds.data_source`, with a one-line error for a missing or unprepared dataset."""
  import tensorflow_datasets as tfds  # heavy; only for these sources

  try:
    return tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for a missing / unprepared dataset
    raise ValueError(
        f"tfds dataset {name!r} split {split!r} in {data_dir or 'the default data_dir'}: "
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    ) from None


def _nested(tree, path: str):
  """tree["a"]["b"] for path "a/b"; a whole key with a "/" in it (e.g. "image/id") first."""
  if path in tree:
    return tree[path]
  head, _, rest = path.partition("/")
  return _nested(tree[head], rest) if rest else tree[head]


class TfdsDetection:
  """grain-ready random-access source over a TFDS array_record detection dataset."""

  def __init__(
      self,
      name: str,
      split: str = "train",
      data_dir: str | None = None,
      *,
      class_split: str = "all",
      policy: str = "strict",
      counter: IssueCounter | None = None,
      data_source: Any = None,
      image_key: str = "image",
      objects_key: str = "objects",
      bbox_key: str = "bbox",
      label_key: str = "label",
      crowd_key: str = "is_crowd",
      id_key: str = "image/id",
      drop_crowd: bool = True,
  ):
    self.policy = check_policy(policy)
    if class_split not in SPLITS:
      raise ValueError(f"unknown split {class_split!r}; expected one of {SPLITS}")
    self.name, self.split = name, split
    self.source = data_source if data_source is not None else _open(name, split, data_dir)
    self.keys = dict(
        image=image_key,
        objects=objects_key,
        bbox=bbox_key,
        label=label_key,
        crowd=crowd_key,
        id=id_key,
    )
    self.drop_crowd = drop_crowd
    self.issues = counter or IssueCounter(f"tfds:{name}/{split}")
    self.filtered: collections.Counter = collections.Counter()
    label_feature = self._label_feature(self.source)
    self.dataset_names = [_norm(n) for n in label_feature.names]
    cats = [{"id": i, "name": n} for i, n in enumerate(self.dataset_names)]
    self.class_names = (
        split_class_names(class_split, cats) if class_split != "all" else self.dataset_names
    )
    wanted = {_norm(n): i for i, n in enumerate(self.class_names)}
    self._to_label = np.array([wanted.get(n, -1) for n in self.dataset_names] + [-1], np.int32)
    if not np.any(self._to_label >= 0):
      raise ValueError(f"tfds dataset {name!r}: none of its classes is in split {class_split!r}")

  def _label_feature(self, ds):
    feats = ds.dataset_info.features
    try:
      return feats[self.keys["objects"]][self.keys["label"]]
    except (KeyError, TypeError):
      raise ValueError(
          f"tfds dataset {self.name!r} lacks required feature "
          f"{self.keys['objects']}/{self.keys['label']}"
      ) from None

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict | None:
    ex = self.source[int(index)]
    k = self.keys
    for key in (k["image"], k["objects"]):
      if key not in ex:
        raise ValueError(
            f"tfds dataset {self.name!r} record {index} lacks required feature {key!r}"
        )
    image = np.asarray(ex[k["image"]])
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, -1)
    h, w = image.shape[:2]
    objs = ex[k["objects"]]
    bbox = np.asarray(objs[k["bbox"]], np.float32).reshape(
        -1, 4
    )  # ymin, xmin, ymax, xmax in [0, 1]
    boxes = bbox[:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)
    raw = np.asarray(objs[k["label"]], np.int64).reshape(-1)
    labels = self._to_label[np.clip(raw, -1, len(self.dataset_names))]
    keep = labels >= 0
    if self.drop_crowd and k["crowd"] in objs:
      crowd = np.asarray(objs[k["crowd"]]).reshape(-1).astype(bool)
      self.filtered["crowd"] += int(np.sum(crowd & keep))
      keep &= ~crowd
    self.filtered["outside_split"] += int(np.sum(labels < 0))
    image_id = int(np.asarray(ex.get(k["id"], index)))
    boxes, labels = sanitize_boxes(
        boxes[keep],
        labels[keep],
        h,
        w,
        policy=self.policy,
        counter=self.issues,
        where=f"tfds {self.name}/{self.split} record {index} (image {image_id})",
    )
    return {
        "image": image.astype(np.uint8),
        "boxes": boxes,
        "labels": labels.astype(np.int32),
        "image_id": image_id,
    }

  def report(self) -> str:
    return self.issues.report()


class TfdsImageText:
  """grain-ready random-access source over a TFDS array_record image-text dataset.

  Record: image uint8 [H, W, 3], captions list[str] (the text feature's strings, stripped; empty
  ones dropped and counted), image_id = index. A record with no caption left is None in skip
  mode (counted), as in the other image-text sources.
  """

  def __init__(
      self,
      name: str,
      split: str = "train",
      data_dir: str | None = None,
      *,
      image_key: str = "image",
      caption_key: str = "captions/text",
      policy: str = "strict",
      counter: IssueCounter | None = None,
      data_source: Any = None,
  ):
    self.policy = check_policy(policy)
    self.name, self.split = name, split
    self.source = data_source if data_source is not None else _open(name, split, data_dir)
    self.image_key, self.caption_key = image_key, caption_key
    for key in (image_key, caption_key):
      try:
        _nested(self.source.dataset_info.features, key)
      except (KeyError, TypeError):
        raise ValueError(
            f"tfds dataset {name!r} lacks required feature {key!r} (data.tfds_image_key / "
            "data.tfds_caption_key name the features to read)"
        ) from None
    self.issues = counter or IssueCounter(f"tfds:{name}/{split}")

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict | None:
    ex = self.source[int(index)]
    where = f"tfds {self.name}/{self.split} record {index}"
    raw = _nested(ex, self.caption_key)
    texts = [raw] if isinstance(raw, (bytes, str)) else list(np.asarray(raw).reshape(-1))
    texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else t for t in texts]
    captions = sanitize_captions(texts, policy=self.policy, counter=self.issues, where=where)
    if not captions:
      handle(self.policy, self.issues, "record_without_captions", where)
      return None
    image = _nested(ex, self.image_key)
    if isinstance(image, bytes):  # an encoded image feature (tfds.features.Image decoding off)
      decoded = decode_image_and_size(image, policy=self.policy, counter=self.issues, where=where)
      if decoded is None:
        return None
      image = decoded[0]
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (1, 4):  # grey, RGBA
      image = image[..., 0] if image.shape[-1] == 1 else image[..., :3]
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, -1)
    if image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
      handle(self.policy, self.issues, "corrupt_image", where, f"shape {image.shape}")
      return None
    return {"image": image.astype(np.uint8), "captions": captions, "image_id": int(index)}

  def report(self) -> str:
    return self.issues.report()
