"""Reading ground truth / detections json and matching detection categories to ground truth.

Detections are COCO results: a list of {image_id, category_id, bbox [x, y, w, h], score}.
Two extensions let a detector that knows only its vocabulary's names be evaluated against any
json (e.g. contiguous class indices vs. COCO's gapped ids): a detection may carry a
`category_name`, or the file may be a dict {"categories": [{id, name}], "detections": [...]}
whose ids refer to its own `categories`. Either way categories are matched BY NAME (exact
first, then case/underscore-insensitive); plain lists are matched by id.

Bad input: a detection record with a missing or mistyped field, a non-finite, huge or
negative-size box, a non-finite score, or an image / category the ground truth lacks follows
`policy` (`data.validation`: strict raises naming the file and record, skip drops and counts).
A file that is not json or not a list, and any problem of the ground truth (it defines the
metric; dropping a box of it would change the numbers), stop in both modes. Detection ids are
not read (pycocotools numbers results itself), so repeated ones are harmless.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from regionclip_jax import files
from regionclip_jax.data.validation import (
    SKIP_HINT,
    IssueCounter,
    as_int,
    as_xywh,
    check_policy,
    describe,
    handle,
    is_number,
)

Json = Any
# No image is a million pixels across; a coordinate beyond it is a units bug (e.g. unscaled
# logits), and such boxes would score as false positives without a word.
MAX_COORD = 1e6


def load_json(source: str | os.PathLike | Json, what: str) -> Json:
  """A json file (path) or an already-loaded object; `what` names it in errors."""
  if not isinstance(source, (str, os.PathLike)):
    return source
  path = os.fspath(source)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} file not found: {path}")
  if os.path.getsize(path) == 0:
    raise ValueError(f"{what} file {path} is empty (not even [])")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
    detail = "nested too deeply" if isinstance(e, RecursionError) else e
    raise ValueError(f"{what} file {path} is not valid json: {detail}") from None


def normalise_name(name: str) -> str:
  """Matching key: lower case, '_' as space, single spaces ("Aerosol_can" == "aerosol can")."""
  return " ".join(name.replace("_", " ").lower().split())


def _entries(gt: Mapping, key: str, what: str) -> list:
  if not isinstance(gt[key], list) or not all(isinstance(e, Mapping) for e in gt[key]):
    raise ValueError(f"{what}: {key!r} must be a list of objects")
  return gt[key]


def _unique_id(entry: Mapping, seen: set, what: str, kind: str, index: int) -> int:
  value = as_int(entry.get("id"))
  if value is None:
    raise ValueError(
        f"{what}: {kind} {index} needs an integer 'id', got {describe(entry.get('id'))}"
    )
  if value in seen:
    # pycocotools indexes by id: a second entry would replace the first in its tables
    raise ValueError(f"{what}: {kind} {index} has id {value}, as an earlier {kind} does")
  seen.add(value)
  return value


def check_ground_truth(gt: Json, what: str = "annotations") -> dict:
  """Validates a COCO/LVIS ground-truth dict; fills COCO's optional `iscrowd` (0) and `area` (w*h).

  Every problem raises a one-line ValueError naming the record: ids missing, mistyped or repeated,
  category names that are not strings, an annotation of an unknown image or category, a box
  that is not four finite numbers of non-negative size."""
  if not isinstance(gt, Mapping):
    raise ValueError(
        f"{what}: expected a json object with images/annotations/categories, "
        f"got {type(gt).__name__}"
    )
  for key in ("images", "annotations", "categories"):
    if key not in gt:
      raise ValueError(f"{what}: missing key {key!r}")
  ids: dict[str, set] = {"image": set(), "annotation": set(), "category": set()}
  gt = dict(gt)
  # ids as ints (7.0 or "7" read as 7), so ground truth and detections compare equal
  gt["images"] = [
      dict(im, id=_unique_id(im, ids["image"], what, "image", i))
      for i, im in enumerate(_entries(gt, "images", what))
  ]
  cats = []
  for i, c in enumerate(_entries(gt, "categories", what)):
    cats.append(dict(c, id=_unique_id(c, ids["category"], what, "category", i)))
    if not isinstance(c.get("name"), str):
      raise ValueError(f"{what}: category {i} needs a string 'name', got {describe(c.get('name'))}")
  gt["categories"] = cats
  anns = []
  for i, a in enumerate(_entries(gt, "annotations", what)):
    ann_id = _unique_id(a, ids["annotation"], what, "annotation", i)
    box = as_xywh(a.get("bbox"))
    if box is None or not np.all(np.isfinite(box)) or box[2] < 0 or box[3] < 0:
      raise ValueError(
          f"{what}: annotation {i} (id {ann_id}) needs a 'bbox' [x, y, w, h] of finite numbers "
          f"with w, h >= 0, got {describe(a.get('bbox'))}"
      )
    raw, a = a, dict(a, id=ann_id)
    for key, kind in (("image_id", "image"), ("category_id", "category")):
      a[key] = as_int(raw.get(key))
      if a[key] not in ids[kind]:
        raise ValueError(
            f"{what}: annotation {i} (id {ann_id}) has {key} {describe(raw.get(key))}, not an "
            f"id of the {kind}s"
        )
    a.setdefault("iscrowd", 0)
    a.setdefault("area", float(box[2] * box[3]))
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


def _own_categories(dets: Mapping, where: str) -> dict[int, str]:
  """A detections file's own {id: name} list (structural: a bad entry stops in both modes)."""
  out = {}
  cats = dets["categories"]
  for j, c in enumerate(cats if isinstance(cats, list) else [cats]):
    cid = as_int(c.get("id")) if isinstance(c, Mapping) else None
    if cid is None or not isinstance(c.get("name"), str):
      raise ValueError(f"{where}: categories entry {j} needs an integer id and a string name")
    out[cid] = c["name"]
  return out


def _problem(d: Any, matcher: CategoryMatcher, image_ids: set, own: dict | None):
  """(kind, detail, (image_id, category_id, bbox, score)) of one detection; kind None if good."""
  if not isinstance(d, Mapping):
    return "not_an_object", describe(d), None
  lacking = [k for k in ("image_id", "bbox", "score") if k not in d]
  if "category_id" not in d and "category_name" not in d:
    lacking.append("category_id")
  if lacking:
    return "missing_field", f"lacks {lacking}", None
  image = as_int(d["image_id"])
  if image is None:
    return "wrong_type", f"image_id must be an integer, got {describe(d['image_id'])}", None
  if "category_name" in d or own is not None:
    if "category_name" in d:
      name = d["category_name"]
    else:
      cid = as_int(d["category_id"])
      if cid is None:
        return (
            "wrong_type",
            f"category_id must be an integer, got {describe(d['category_id'])}",
            None,
        )
      if cid not in own:
        return (
            "unknown_category",
            f"category_id {cid} that the detections' own 'categories' list lacks",
            None,
        )
      name = own[cid]
    if not isinstance(name, str):
      return "wrong_type", f"category_name must be a string, got {describe(name)}", None
    cat = matcher.by_name(name)
    if cat is None:
      return "unknown_category", f"category name {name!r} is not in the ground truth", None
  else:
    cat = as_int(d["category_id"])
    if cat is None:
      return "wrong_type", f"category_id must be an integer, got {describe(d['category_id'])}", None
    if cat not in matcher.gt_ids:
      n = len(matcher.gt_ids)
      return (
          "unknown_category",
          f"unknown category_id {cat} (not among the ground truth's {n} category ids)",
          None,
      )
  if image not in image_ids:
    return "unknown_image", f"unknown image_id {image} (not in the ground truth's images)", None
  box = as_xywh(d["bbox"])
  if box is None:
    return "wrong_type", f"bbox must be [x, y, w, h] numbers, got {describe(d['bbox'])}", None
  with np.errstate(over="ignore", invalid="ignore"):
    derived = np.array([box[0] + box[2], box[1] + box[3], box[2] * box[3]])
  if not (np.all(np.isfinite(box)) and np.all(np.isfinite(derived))):
    return "non_finite_box", f"bbox {describe(d['bbox'])}", None
  if np.any(np.abs(box) > MAX_COORD):
    return "huge_box", f"bbox {describe(d['bbox'])} beyond +-{MAX_COORD:g} px", None
  if box[2] < 0 or box[3] < 0:
    return "negative_size_box", f"bbox {describe(d['bbox'])} has w or h < 0", None
  score = d["score"]
  if not is_number(score):
    return "wrong_type", f"score must be a number, got {describe(score)}", None
  if not np.isfinite(float(score)):
    return "non_finite_score", f"score {score}", None
  return None, "", (image, cat, [float(v) for v in box], float(score))


def load_detections(
    detections: str | os.PathLike | Json,
    gt: Mapping,
    on_unknown: str = "error",
    *,
    policy: str = "strict",
    counter: IssueCounter | None = None,
    hint: str = SKIP_HINT,
) -> tuple[list[dict], int]:
  """Detections as COCO results with ground-truth category ids.

  Args:
    detections: path, list of results, or {"categories": [...], "detections"|"annotations": [...]}.
    gt: ground-truth dict (its `categories` and `images`), as `check_ground_truth` returns it.
    on_unknown: "drop" leaves out detections of a category or image the ground truth lacks even
      when `policy` is strict (counted in the number returned); "error" leaves them to `policy`.
    policy: "strict" raises a DataError naming the file, the record's index and the problem;
      "skip" drops the record and counts it in `counter` by kind (module docstring).
    hint: how to switch to skip, for the strict message (a config key, a flag).
  Returns:
    (results [{image_id, category_id, bbox, score}], number left out).
  """
  if on_unknown not in ("error", "drop"):
    raise ValueError(f"on_unknown must be 'error' or 'drop', got {on_unknown!r}")
  check_policy(policy)
  name = os.fspath(detections) if isinstance(detections, (str, os.PathLike)) else "detections"
  dets = load_json(detections, "detections")
  own = None
  if isinstance(dets, Mapping):
    if "categories" in dets:
      own = _own_categories(dets, name)
    for key in ("detections", "annotations"):
      if key in dets:
        dets = dets[key]
        break
    else:
      raise ValueError(f"{name}: a json object needs a 'detections' (or 'annotations') list")
  if not isinstance(dets, list):
    raise ValueError(f"{name}: expected a list of results, got {type(dets).__name__}")

  matcher = CategoryMatcher(gt["categories"])
  image_ids = {int(im["id"]) for im in gt["images"]}
  out, dropped = [], 0
  for i, d in enumerate(dets):
    kind, detail, good = _problem(d, matcher, image_ids, own)
    if kind is not None:
      unknown = kind in ("unknown_category", "unknown_image")
      mode = "skip" if unknown and on_unknown == "drop" else policy
      handle(mode, counter, kind, f"{name} detection {i}", detail, hint)
      dropped += 1
      continue
    image, cat, bbox, score = good
    out.append({"image_id": image, "category_id": cat, "bbox": bbox, "score": score})
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
