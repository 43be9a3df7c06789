"""Reading ground truth / detections json and matching detection categories to ground truth.

Detections are COCO results: a list of {image_id, category_id, bbox [x, y, w, h], score}.
Two extensions let a detector that knows only its vocabulary's names be evaluated against any
json (e.g. contiguous class indices vs. COCO's gapped ids): a detection may carry a
`category_name`, or the file may be a dict {"categories": [{id, name}], "detections": [...]}
whose ids refer to its own `categories`. Either way categories are matched BY NAME (exact
first, then case/underscore-insensitive); plain lists are matched by id.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from regionclip_jax import files

Json = Any


def load_json(source: str | os.PathLike | Json, what: str) -> Json:
  """A json file (path) or an already-loaded object; `what` names it in errors."""
  if not isinstance(source, (str, os.PathLike)):
    return source
  path = os.fspath(source)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} file not found: {path}")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{what} file {path} is not valid json: {e}") from None


def normalise_name(name: str) -> str:
  """Matching key: lower case, '_' as space, single spaces ("Aerosol_can" == "aerosol can")."""
  return " ".join(name.replace("_", " ").lower().split())


def check_ground_truth(gt: Json, what: str = "annotations") -> dict:
  """Validates a COCO/LVIS ground-truth dict; fills COCO's optional `iscrowd` (0) and `area` (w*h)."""
  if not isinstance(gt, Mapping):
    raise ValueError(
        f"{what}: expected a json object with images/annotations/categories, "
        f"got {type(gt).__name__}"
    )
  for key in ("images", "annotations", "categories"):
    if key not in gt:
      raise ValueError(f"{what}: missing key {key!r}")
  gt = dict(gt)
  anns = []
  for a in gt["annotations"]:
    if "bbox" not in a or len(a["bbox"]) != 4:
      raise ValueError(f"{what}: annotation {a.get('id')} needs a 4-number 'bbox' [x, y, w, h]")
    a = dict(a)
    a.setdefault("iscrowd", 0)
    a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
    anns.append(a)
  gt["annotations"] = anns
  gt.setdefault("info", {})
  return gt


class CategoryMatcher:
  """Maps a detection's category (id, or name) to a ground-truth category id."""

  def __init__(self, gt_categories: Sequence[Mapping]):
    self.gt_ids = {int(c["id"]) for c in gt_categories}
    self.exact = {c["name"]: int(c["id"]) for c in gt_categories}
    self.loose: dict[str, int] = {}
    for c in gt_categories:
      key = normalise_name(c["name"])
      if key in self.loose and self.loose[key] != int(c["id"]):
        raise ValueError(
            f"ground-truth categories {c['name']!r} and id {self.loose[key]} "
            f"have the same name up to case/underscores"
        )
      self.loose[key] = int(c["id"])

  def by_name(self, name: str) -> int | None:
    if name in self.exact:
      return self.exact[name]
    return self.loose.get(normalise_name(name))


def load_detections(
    detections: str | os.PathLike | Json, gt: Mapping, on_unknown: str = "error"
) -> tuple[list[dict], int]:
  """Detections as COCO results with ground-truth category ids.

  Args:
    detections: path, list of results, or {"categories": [...], "detections"|"annotations": [...]}.
    gt: ground-truth dict (its `categories` and `images`).
    on_unknown: "error" (default) raises on a category or image the ground truth lacks, naming
      it; "drop" drops such detections and counts them.
  Returns:
    (results [{image_id, category_id, bbox, score}], number dropped).
  """
  if on_unknown not in ("error", "drop"):
    raise ValueError(f"on_unknown must be 'error' or 'drop', got {on_unknown!r}")
  dets = load_json(detections, "detections")
  det_id_to_name = None
  if isinstance(dets, Mapping):
    if "categories" in dets:
      det_id_to_name = {int(c["id"]): c["name"] for c in dets["categories"]}
    for key in ("detections", "annotations"):
      if key in dets:
        dets = dets[key]
        break
    else:
      raise ValueError("detections json object needs a 'detections' (or 'annotations') list")
  if not isinstance(dets, list):
    raise ValueError(f"detections: expected a list of results, got {type(dets).__name__}")

  matcher = CategoryMatcher(gt["categories"])
  image_ids = {int(im["id"]) for im in gt["images"]}
  out, dropped = [], 0
  for i, d in enumerate(dets):
    if not isinstance(d, Mapping) or not {"image_id", "bbox", "score"} <= set(d):
      raise ValueError(f"detection {i} needs image_id, bbox, score: {d!r}")
    if "category_name" in d:
      name = d["category_name"]
      cat = matcher.by_name(name)
      problem = None if cat is not None else f"category name {name!r} is not in the ground truth"
    elif "category_id" not in d:
      raise ValueError(f"detection {i} needs a category_id or category_name")
    elif det_id_to_name is not None:
      if int(d["category_id"]) not in det_id_to_name:
        raise ValueError(
            f"detection {i} has category_id {d['category_id']} that the detections' "
            f"own 'categories' list lacks"
        )
      name = det_id_to_name[int(d["category_id"])]
      cat = matcher.by_name(name)
      problem = None if cat is not None else f"category name {name!r} is not in the ground truth"
    else:
      cat = int(d["category_id"])
      problem = (
          None
          if cat in matcher.gt_ids
          else (
              f"unknown category_id {cat} (not among the ground truth's {len(matcher.gt_ids)} category ids)"
          )
      )
    if problem is None and int(d["image_id"]) not in image_ids:
      problem = f"unknown image_id {d['image_id']} (not in the ground truth's images)"
    if problem is not None:
      if on_unknown == "drop":
        dropped += 1
        continue
      raise ValueError(f"detection {i}: {problem}")
    bbox = [float(v) for v in d["bbox"]]
    if len(bbox) != 4:
      raise ValueError(f"detection {i}: bbox must be [x, y, w, h], got {d['bbox']!r}")
    out.append(
        {
            "image_id": int(d["image_id"]),
            "category_id": cat,
            "bbox": bbox,
            "score": float(d["score"]),
        }
    )
  return out, dropped


def detections_to_coco(
    image_ids, boxes, scores, classes, valid, categories: Sequence[Mapping]
) -> list[dict]:
  """Fixed-shape detector outputs -> COCO results carrying `category_name`.

  Args:
    image_ids: [N] ints. boxes: [N, K, 4] x1y1x2y2 image pixels (of the image the ground truth
      describes, i.e. already rescaled). scores: [N, K]. classes: [N, K] indices into
      `categories`. valid: [N, K] bool (padding off).
    categories: the detector's vocabulary as [{id, name}] in class-index order.
  """
  boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
  classes, valid = np.asarray(classes), np.asarray(valid, bool)
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(f"boxes must be [N, K, 4], got {boxes.shape}")
  if not (scores.shape == classes.shape == valid.shape == boxes.shape[:2]):
    raise ValueError(
        f"scores {scores.shape}, classes {classes.shape}, valid {valid.shape} must "
        f"all be boxes' [N, K] = {boxes.shape[:2]}"
    )
  out = []
  for n, img in enumerate(np.asarray(image_ids).reshape(-1)):
    for k in np.flatnonzero(valid[n]):
      x1, y1, x2, y2 = boxes[n, k]
      c = categories[int(classes[n, k])]
      out.append(
          {
              "image_id": int(img),
              "category_id": int(c["id"]),
              "category_name": c["name"],
              "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
              "score": float(scores[n, k]),
          }
      )
  return out


def write_json(path: str | os.PathLike, obj: Json) -> None:
  """json with NaN written as null (strict json), written atomically."""
  files.write_json(path, obj)


def ground_truth_to_coco(
    image_ids, boxes, labels, valid, image_sizes, categories: Sequence[Mapping]
) -> dict:
  """Padded ground-truth arrays -> a COCO ground-truth dict (e.g. for the shapes world).

  Args:
    image_ids: [N]. boxes: [N, K, 4] x1y1x2y2 pixels. labels: [N, K] indices into `categories`.
    valid: [N, K] bool. image_sizes: [N, 2] (height, width).
    categories: [{id, name}] in label-index order (extra keys, e.g. `frequency`, are kept).
  """
  boxes = np.asarray(boxes, np.float64)
  labels, valid = np.asarray(labels), np.asarray(valid, bool)
  sizes = np.asarray(image_sizes).reshape(-1, 2)
  if (
      boxes.ndim != 3
      or boxes.shape[-1] != 4
      or labels.shape != boxes.shape[:2]
      or valid.shape != boxes.shape[:2]
  ):
    raise ValueError(
        f"boxes [N, K, 4] {boxes.shape}, labels {labels.shape} and valid "
        f"{valid.shape} must agree"
    )
  images, anns = [], []
  for n, img in enumerate(np.asarray(image_ids).reshape(-1)):
    images.append({"id": int(img), "height": int(sizes[n, 0]), "width": int(sizes[n, 1])})
    for k in np.flatnonzero(valid[n]):
      x1, y1, x2, y2 = (float(v) for v in boxes[n, k])
      anns.append(
          {
              "id": len(anns) + 1,
              "image_id": int(img),
              "category_id": int(categories[int(labels[n, k])]["id"]),
              "bbox": [x1, y1, x2 - x1, y2 - y1],
              "area": (x2 - x1) * (y2 - y1),
              "iscrowd": 0,
          }
      )
  return {"images": images, "annotations": anns, "categories": [dict(c) for c in categories]}
