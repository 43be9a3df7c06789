"""TFDS detection datasets through `tfds.data_source` (array_record, read without TensorFlow).

For a dataset the user prepared with `file_format="array_record"`, e.g. `coco/2017`:
image [H, W, 3], objects/bbox (normalised ymin, xmin, ymax, xmax), objects/label (ClassLabel),
objects/is_crowd, image/id. Records come out in our format (pixel x1y1x2y2 boxes, labels indexing
`class_names` of the chosen class split, matched by name), with the same strict | skip policy
for bad boxes as the json sources. Keys are configurable for other datasets of this shape.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from regionclip_jax.data.class_lists import SPLITS, split_class_names
from regionclip_jax.data.validation import IssueCounter, check_policy, sanitize_boxes


def _norm(name: str) -> str:
  return name.replace("_", " ").strip().lower()


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
    import tensorflow_datasets as tfds  # heavy; only for this source

    self.policy = check_policy(policy)
    if class_split not in SPLITS:
      raise ValueError(f"unknown split {class_split!r}; expected one of {SPLITS}")
    self.name, self.split = name, split
    if data_source is None:
      try:
        data_source = tfds.data_source(name, split=split, data_dir=data_dir)
      except Exception as e:  # tfds raises several types for a missing / unprepared dataset
        raise ValueError(
            f"tfds dataset {name!r} split {split!r} in {data_dir or 'the default data_dir'}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    self.source = data_source
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
    label_feature = self._label_feature(data_source)
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
