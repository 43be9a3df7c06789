"""What the zero-shot tool reads, checked record by record, and its COCO / LVIS-json protocol.

Images (`read_image`, `list_images`): a file the detector cannot run on is an `ImageProblem`
naming its kind. Ground truth (`read_ground_truth`, `check_ground_truth_records`): structure
errors always stop; bad records follow `--on_error` (strict: one line naming the record; skip:
dropped and counted). `evaluate_annotations` classifies the json's GT boxes (or proposals) and
scores them with pycocotools.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Optional

import numpy as np
from PIL import Image

from regionclip_jax.data.class_lists import resolve_class_list
from regionclip_jax.data.images import shortest_edge_size
from regionclip_jax.data.validation import DataError, IssueCounter, check_policy
from regionclip_jax.detection.zero_shot import ZeroShotDetector
from regionclip_jax.evaluation.coco_eval import evaluate_coco
from regionclip_jax.files import write_json

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SKIP_HINT = "--on_error=skip skips such records"
# COCO boxes may overshoot the border by rounding; more than this is a bad record
_BORDER_SLOP_PX = 1.0


class ImageProblem(DataError):
  """A file the detector cannot run on; `kind`: missing_image | unreadable_image |
  image_too_large | image_too_small."""

  def __init__(self, kind: str, detail: str):
    super().__init__(f"{kind}: {detail}")
    self.kind, self.detail = kind, detail


def read_image(path: str, test_size: int = 800, max_size: int = 1333) -> np.ndarray:
  """The file at `path` -> uint8 [H, W, 3] RGB, decoded in full (a truncated file fails here, not
  halfway through a run). `ImageProblem` for a missing file, data PIL cannot decode, an image over
  PIL's decompression-bomb limit, or one so thin that the detector's resize (`test_size`,
  `max_size`) leaves a side under 1 px."""
  if not os.path.isfile(path):
    raise ImageProblem("missing_image", f"no file {path}")
  try:
    with Image.open(path) as im:
      im.load()
      img = np.asarray(im.convert("RGB"))
  except Image.DecompressionBombError as e:
    raise ImageProblem("image_too_large", str(e)[:160]) from None
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad data
    raise ImageProblem("unreadable_image", f"{type(e).__name__}: {e}"[:160]) from None
  h, w = img.shape[:2]
  if min(shortest_edge_size(h, w, test_size, max_size)) < 1:
    raise ImageProblem("image_too_small", f"{w}x{h} px resizes to under 1 px")
  return img


def bad_record(policy: str, issues: Optional[IssueCounter], kind: str, where: str, detail: str):
  """strict: raise one line naming the record; skip: count it and warn with one line."""
  detail = " ".join(str(detail).split())  # a decoder's message may span lines
  if policy == "strict":
    raise DataError(f"zero_shot: {where}: {kind}: {detail} ({SKIP_HINT})")
  if issues is not None:
    issues.add(kind, where)
  print(f"zero_shot: warning: skipped {where}: {kind}: {detail}", file=sys.stderr, flush=True)


def list_images(images_dir: str) -> list[str]:
  """Sorted names of the files in `images_dir` with an image extension (IMAGE_EXTS)."""
  if not os.path.isdir(images_dir):
    raise DataError(f"zero_shot: --images {images_dir} is not a folder")
  files = sorted(f for f in os.listdir(images_dir) if f.lower().endswith(IMAGE_EXTS))
  if not files:
    raise DataError(f"zero_shot: no images ({', '.join(IMAGE_EXTS)}) in {images_dir}")
  return files


def _image_file(image: dict) -> str:
  # LVIS lists coco_url only; its last two parts are e.g. "val2017/000000391895.jpg"
  return image.get("file_name") or "/".join(str(image["coco_url"]).split("/")[-2:])


def read_ground_truth(annotations: str) -> dict:
  """The COCO / LVIS json at `annotations` with its structure checked: a DataError, one line
  naming the file and record, for unreadable json, a missing section or a missing field."""
  try:
    with open(annotations, encoding="utf-8") as f:
      gt = json.load(f)
  except OSError as e:
    raise DataError(f"zero_shot: --annotations {annotations}: {e.strerror or e}") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"zero_shot: {annotations}: not readable json ({e})") from None
  sections = {
      "images": ("id",),
      "annotations": ("image_id", "category_id", "bbox"),
      "categories": ("id", "name"),
  }
  if not isinstance(gt, dict) or any(not isinstance(gt.get(k), list) for k in sections):
    raise DataError(f"zero_shot: {annotations}: needs lists {sorted(sections)} at the top level")
  for section, fields in sections.items():
    record = {"images": "image", "annotations": "annotation", "categories": "category"}[section]
    for i, r in enumerate(gt[section]):
      if not isinstance(r, dict) or any(k not in r for k in fields):
        raise DataError(
            f"zero_shot: {annotations}: {record} {i} needs fields {list(fields)}, "
            f"got {str(r)[:80]}"
        )
      ids = [k for k in fields if k in ("id", "image_id", "category_id")]
      if any(not isinstance(r[k], int) or isinstance(r[k], bool) for k in ids):
        raise DataError(
            f"zero_shot: {annotations}: {record} {i}: {ids} must be integers, " f"got {str(r)[:80]}"
        )
      if section == "images" and not (r.get("file_name") or r.get("coco_url")):
        raise DataError(f"zero_shot: {annotations}: image {i} (id {r['id']}) has no file_name")
  return gt


def _annotation_where(annotations: str, k: int, a: dict) -> str:
  return f"{annotations} annotation {k} (id {a.get('id')}, image {a['image_id']})"


def _finite(v) -> bool:
  try:
    return math.isfinite(v)
  except OverflowError:  # an int beyond any float
    return False


def _box_problem(bbox) -> Optional[tuple[str, str]]:
  """(kind, detail) when a COCO bbox is not 4 finite numbers of positive width and height."""
  ok = isinstance(bbox, (list, tuple)) and len(bbox) == 4
  if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
    return "bad_box", f"bbox must be 4 numbers [x, y, w, h], got {str(bbox)[:60]}"
  if not all(_finite(v) for v in bbox):
    return "non_finite_box", f"bbox {str(bbox)[:60]}"
  if bbox[2] <= 0 or bbox[3] <= 0:
    return "empty_box", f"bbox {bbox} has no area"
  return None


def check_ground_truth_records(
    gt: dict, annotations: str, policy: str, issues: Optional[IssueCounter]
) -> dict:
  """Per `policy`, the records of a structure-checked `gt`: a repeated image id, an annotation
  of an image or category the json does not list, a bbox `_box_problem` refuses. strict: a
  DataError naming the first; skip: those records dropped (counted, one warning line each)."""
  images, kept_images = set(), []
  for im in gt["images"]:
    where = f"{annotations} image {im['id']} ({_image_file(im)})"
    if im["id"] in images:
      bad_record(policy, issues, "duplicate_image_id", where, "an earlier image has this id")
      continue
    images.add(im["id"])
    kept_images.append(im)
  cats = {c["id"] for c in gt["categories"]}
  kept = []
  for k, a in enumerate(gt["annotations"]):
    where = _annotation_where(annotations, k, a)
    problem = (
        ("unknown_image", "no image of this id in the json")
        if a["image_id"] not in images
        else ("unknown_category", f"category_id {a['category_id']} is not in the json")
        if a["category_id"] not in cats
        else _box_problem(a["bbox"])
    )
    if problem:
      bad_record(policy, issues, problem[0], where, problem[1])
      continue
    kept.append(a)
  return dict(gt, images=kept_images, annotations=kept)


def _boxes_inside(anns, h: int, w: int, where: dict, policy: str, issues) -> list:
  """The annotations whose bbox lies in the h x w image (within _BORDER_SLOP_PX), per policy;
  `where`: id(annotation) -> its name in messages."""
  out = []
  for a in anns:
    x, y, bw, bh = (float(v) for v in a["bbox"])
    s = _BORDER_SLOP_PX
    if x < -s or y < -s or x + bw > w + s or y + bh > h + s:
      detail = f"bbox {a['bbox']} vs image {w}x{h}"
      bad_record(policy, issues, "box_outside_image", where[id(a)], detail)
      continue
    out.append(a)
  return out


def evaluate_annotations(
    detector: ZeroShotDetector,
    annotations: str,
    images_dir: str,
    *,
    use_gt_boxes: bool = True,
    split: Optional[str] = None,
    embeddings: str = "",
    max_images: Optional[int] = None,
    base_classes: str = "",
    vocabulary: str = "",
    on_error: str = "strict",
    issues: Optional[IssueCounter] = None,
    detections_out: str = "",
) -> dict:
  """Paper zero-shot protocol on COCO / LVIS-format data: classify GT boxes (or proposals) of every
  image against all the json's categories and score with pycocotools. `base_classes` (a split
  name, "all", "a,b,c" or "@file.txt", as the finetune job's data.base_classes) and `vocabulary`
  (same syntax; "" = every category) split an own dataset's classes into base / novel (AP50 and
  AP of each) in place of `split`; the ground truth is cut to the vocabulary.

  Bad records (`check_ground_truth_records`, an image `read_image` refuses, a box outside its
  image) stop the run with `on_error` "strict", one line naming the record; with "skip" they are
  counted in `issues`, and a skipped image's ground truth leaves the evaluation with it.
  `detections_out`: also write the detections there (COCO results json, the json's ids)."""
  check_policy(on_error)
  gt = read_ground_truth(annotations)
  # records keep their identity through the checks and the class cut: name them by json index
  where = {id(a): _annotation_where(annotations, k, a) for k, a in enumerate(gt["annotations"])}
  gt = check_ground_truth_records(gt, annotations, on_error, issues)
  names_split = {}
  if base_classes or vocabulary:
    try:
      vocab = resolve_class_list(
          vocabulary or "all", gt["categories"], annotations, "zero_shot.vocabulary", "all"
      )
      base = resolve_class_list(
          base_classes or "all", gt["categories"], annotations, "zero_shot.base_classes", "base"
      )
    except (ValueError, FileNotFoundError) as e:
      raise DataError(str(e)) from None  # the user's class lists: one line, no traceback
    ids = {int(c["id"]) for c in gt["categories"] if c["name"] in set(vocab)}
    gt = dict(
        gt,
        categories=[c for c in gt["categories"] if int(c["id"]) in ids],
        annotations=[a for a in gt["annotations"] if int(a["category_id"]) in ids],
    )
    if base_classes:  # else `split` (if any) still names base and novel
      names_split = {
          "base_names": [n for n in vocab if n in set(base)],
          "novel_names": [n for n in vocab if n not in set(base)],
      }
  cats = sorted(gt["categories"], key=lambda c: c["id"])
  names = [c["name"] for c in cats]
  emb = detector.text_embeddings(names, embeddings)
  by_image: dict[int, list] = {}
  for a in gt["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a)
  dets, kept_images, kept_anns = [], [], []
  for img in gt["images"][:max_images]:
    anns = by_image.get(img["id"], [])
    if use_gt_boxes and not anns:
      kept_images.append(img)
      continue
    file = os.path.join(images_dir, _image_file(img))
    try:
      image = read_image(file, detector.test_size, detector.max_size)
    except ImageProblem as e:  # named by its record, not a traceback from PIL
      at = f"{annotations} image {img['id']} ({_image_file(img)})"
      bad_record(on_error, issues, e.kind, at, e.detail)
      continue
    anns = _boxes_inside(anns, *image.shape[:2], where, on_error, issues)
    kept_images.append(img)
    kept_anns += anns
    if use_gt_boxes and not anns:
      continue
    boxes = None
    if use_gt_boxes:
      xywh = np.asarray([a["bbox"] for a in anns], np.float32)
      boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    d = detector.detect(image, emb, boxes, names=names)
    for b, s, c in zip(d["boxes"], d["scores"], d["classes"]):
      dets.append(
          {
              "image_id": img["id"],
              "category_id": int(cats[int(c)]["id"]),
              "score": float(s),
              "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
          }
      )
  if detections_out:
    write_json(detections_out, dets)
  # the ground truth of the images that ran (all but those skipped, up to max_images)
  gt = dict(gt, images=kept_images, annotations=kept_anns)
  return evaluate_coco(gt, dets, split=split, **names_split)
