r"""Open-vocabulary detection on your own images with your own words (no fine-tuning needed).

  python -m regionclip_jax.tools.zero_shot --checkpoint=CKPT --images=DIR \
      --vocabulary="cat,dog,person" [--exemplars=FILE.json] [--rpn=RPN_WORKDIR] [--output=DIR]

Writes `<output>/<image>.png` (boxes + "name score") and `<output>/detections.json`
(COCO-style results with `file_name` and `category_name`, boxes in original pixels), both
atomically (temporary name, then rename).

CKPT: any CLIP checkpoint `models.clip.load` reads (OpenAI .pt, HF / open_clip, converted dir,
official RegionCLIP .pth) — the paper's zero-shot protocol: region embeddings (RoIAlign on res4
-> layer4 -> attnpool) of proposals, classified against the vocabulary's 81-prompt text embeddings
— or a fine-tuned detector's `export/` directory (then its box regressor is applied too).
Proposals: a frozen RPN (`--rpn`, a stage="rpn" workdir or its export) or, without one, a
multi-scale sliding window (a weak fallback: scores then come from CLIP alone). With
`--annotations=GT.json` the images' ground-truth boxes (`--boxes=gt`) or the RPN proposals are
classified and scored with pycocotools (AP50 novel / base / all with `--split`); the metrics are
printed and written to `<output>/zero_shot_metrics.json`.
Vocabulary text embeddings come from the checkpoint's text tower, `--text_checkpoint`, or
`--embeddings=FILE` (`.npy`, or the official `extract_concept_features` `.pth`; [K, D], in
vocabulary order). `--exemplars=FILE.json` adds classes given by example boxes
(`detection/exemplars.py` has the format): a class named like a vocabulary word takes that word's
place, the others join the vocabulary, which may then be left out.

Bad inputs (`--on_error`): a folder's file that is not a usable image (empty, truncated, not an
image, over PIL's decompression-bomb limit) is by default skipped with one warning line naming it
and counted in the final summary; `--on_error=strict` stops at it instead. With `--annotations`
the default is strict: an unknown image or category, a missing or unreadable image file, a bbox
that is not 4 finite numbers of positive size or lies outside its image stop the run, one line
naming the record; `--on_error=skip` leaves such records (and a skipped image's ground truth) out.
The command line prints these errors as one line, exit status 1.

The flags are the fields of `configs/zero_shot.py`'s `zero_shot` section (same names and
defaults); `--preset` picks the config preset the given flags override. As a `main.py` task
(`--config=configs/zero_shot.py`), `run(config, workdir)` is the same job.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import sys
import tempfile
from typing import Optional, Sequence

import ml_collections
import numpy as np
from absl import app, flags
from PIL import Image

from configs import zero_shot as zero_shot_config
from regionclip_jax.data import categories
from regionclip_jax.data.class_lists import resolve_class_list
from regionclip_jax.data.images import shortest_edge_size
from regionclip_jax.data.validation import DataError, IssueCounter, check_policy, read_names
from regionclip_jax.detection.exemplars import (
    ExemplarClass,
    read_exemplars,
    vocabulary_with_exemplars,
)
from regionclip_jax.detection.export import read_meta
from regionclip_jax.detection.zero_shot import ZeroShotDetector, sliding_window_boxes
from regionclip_jax.evaluation.coco_eval import evaluate_coco
from regionclip_jax.evaluation.visualize import draw_detections
from regionclip_jax.files import write_json
from regionclip_jax.tools import config_flags

__all__ = [
    "ImageProblem",
    "ZeroShotDetector",
    "detect_folder",
    "evaluate_annotations",
    "parse_vocabulary",
    "read_image",
    "run",
    "sliding_window_boxes",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
BUILTIN_VOCABULARIES = {
    "coco_ovd": lambda: list(categories.COCO_OVD_ALL),
    "lvis": lambda: [
        c["name"] for c in sorted(categories.read_lvis_v1_categories(), key=lambda c: c["id"])
    ],
}
_SKIP_HINT = "--on_error=skip skips such records"
# COCO boxes may overshoot the border by rounding; more than this is a bad record
_BORDER_SLOP_PX = 1.0


def parse_vocabulary(text: str) -> list[str]:
  """ "a,b,c", "@file.txt" (one name per line; "name,count" rows allowed) or a built-in
  vocabulary ("coco_ovd": the 65 COCO OVD classes, "lvis": the 1203 LVIS v1 classes, both in
  category-id order, the row order of the official embedding files) -> names; a DataError (a
  ValueError) for a missing file, no name or a repeated name."""
  if text.strip() in BUILTIN_VOCABULARIES:
    return BUILTIN_VOCABULARIES[text.strip()]()
  if text.startswith("@"):
    try:
      names = read_names(text[1:], "vocabulary file")
    except (OSError, ValueError) as e:  # missing or empty: the message names the file
      raise DataError(f"zero_shot: --vocabulary: {e}") from None
  else:
    names = [t.strip() for t in text.split(",")]
  names = [n for n in names if n]
  if not names:
    raise DataError("zero_shot: --vocabulary is empty; give comma-separated names or @file.txt")
  if len(set(names)) != len(names):
    raise DataError(f"zero_shot: --vocabulary has duplicate names: {names}")
  return names


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


def _bad_record(policy: str, issues: Optional[IssueCounter], kind: str, where: str, detail: str):
  """strict: raise one line naming the record; skip: count it and warn with one line."""
  detail = " ".join(str(detail).split())  # a decoder's message may span lines
  if policy == "strict":
    raise DataError(f"zero_shot: {where}: {kind}: {detail} ({_SKIP_HINT})")
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


def figure_names(files: Sequence[str]) -> dict[str, str]:
  """file -> its figure's name: `<stem>.png`; `<file>.png` where files share a stem up to case
  (a.jpg and A.png), so that no figure overwrites another, on case-insensitive disks too."""
  stems = collections.Counter(os.path.splitext(f)[0].lower() for f in files)
  out, used = {}, set()
  for f in files:
    stem = os.path.splitext(f)[0]
    name, k = (f"{stem}.png" if stems[stem.lower()] == 1 else f"{f}.png"), 1
    while name.lower() in used:
      name, k = f"{stem}_{k}.png", k + 1
    used.add(name.lower())
    out[f] = name
  return out


def detect_folder(
    detector: ZeroShotDetector,
    images_dir: str,
    names: Sequence[str],
    output: str,
    *,
    embeddings: str = "",
    draw_threshold: float = 0.0,
    exemplars: Sequence[ExemplarClass] = (),
    on_error: str = "skip",
    issues: Optional[IssueCounter] = None,
) -> list[dict]:
  """Runs every image of `images_dir`, writes a PNG per image and detections.json -> detections.

  `names` are classed by their text embeddings; `exemplars` (`detection.exemplars`) replace the
  class of the same name or join the vocabulary. A file `read_image` refuses is, with `on_error`
  "skip", left out with a warning line and counted in `issues`; with "strict" it stops the run
  (DataError naming it) before detections.json is written. detections.json and the figures are
  written atomically; the json lists the detections of every image that ran.
  """
  check_policy(on_error)
  files = list_images(images_dir)
  if exemplars:
    names, emb = vocabulary_with_exemplars(detector, names, exemplars, embeddings)
  else:
    emb = detector.text_embeddings(names, embeddings)
  figures = figure_names(files)
  os.makedirs(output, exist_ok=True)
  results = []
  for i, f in enumerate(files):
    path = os.path.join(images_dir, f)
    try:
      img = read_image(path, detector.test_size, detector.max_size)
    except ImageProblem as e:
      _bad_record(on_error, issues, e.kind, path, e.detail)
      continue
    d = detector.detect(img, emb, names=names)
    draw_detections(
        img,
        d["boxes"],
        [names[c] for c in d["classes"]],
        d["scores"],
        score_threshold=draw_threshold,
        upscale=1,
        path=os.path.join(output, figures[f]),
    )
    for b, s, c in zip(d["boxes"], d["scores"], d["classes"]):
      results.append(
          {
              "image_id": i,
              "file_name": f,
              "category_id": int(c) + 1,
              "category_name": names[int(c)],
              "score": float(s),
              "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
          }
      )
  write_json(os.path.join(output, "detections.json"), results)
  return results


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
      _bad_record(policy, issues, "duplicate_image_id", where, "an earlier image has this id")
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
      _bad_record(policy, issues, problem[0], where, problem[1])
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
      _bad_record(policy, issues, "box_outside_image", where[id(a)], detail)
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
      _bad_record(on_error, issues, e.kind, at, e.detail)
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


def summary_line(out: dict, output: str) -> str:
  """The folder run's closing line: detections, images run of those listed, skips by kind."""
  ran = out["num_images"] - out["num_skipped"]
  line = (
      f"zero_shot: {out['num_detections']} detections on {ran} of {out['num_images']} images "
      f"written to {output}"
  )
  kinds = ", ".join(f"{k} {n}" for k, n in sorted(out["skipped"].items()))
  return line + (f" (skipped {out['num_skipped']}: {kinds})" if kinds else "")


def run(config, workdir: str | None = None) -> dict:
  """The zero-shot job (task "zero_shot", configs/zero_shot.py; the command line builds the same
  config): evaluate on `zero_shot.annotations` (-> metrics, also in
  `<workdir>/zero_shot_metrics.json`), else detect on the `zero_shot.images` folder (-> PNGs +
  detections.json in `zero_shot.output`, default `<workdir>/zero_shot`; returns num_detections,
  num_images (listed), num_skipped and skipped {kind: count})."""
  z = config.zero_shot
  policy = check_policy(z.on_error or ("strict" if z.annotations else "skip"))
  # the user's own inputs are checked before the checkpoint loads: a typo fails in seconds
  names, classes, files = [], [], []
  if z.annotations:
    if z.exemplars:
      raise DataError("zero_shot: --exemplars classes an --images folder, not --annotations")
  else:
    classes = read_exemplars(z.exemplars) if z.exemplars else []
    names = parse_vocabulary(z.vocabulary) if z.vocabulary or not classes else []
    files = list_images(z.images)
  if not workdir:
    workdir = tempfile.mkdtemp(prefix="regionclip_zero_shot_")
    print(f"[zero_shot] workdir {workdir}", flush=True)
  if z.checkpoint_kind:  # e.g. the detector presets: not a pretrained checkpoint by mistake
    read_meta(z.checkpoint, z.checkpoint_kind)
  os.makedirs(workdir, exist_ok=True)
  det = ZeroShotDetector(
      z.checkpoint,
      rpn=z.rpn,
      text_checkpoint=z.text_checkpoint,
      source=z.source or None,
      test_size=z.test_size,
      max_size=z.max_size,
      score_thresh=z.score_thresh,
      nms_thresh=z.nms_thresh,
      topk=z.topk,
      rpn_fusion=z.rpn_fusion or None,
      soft_nms=z.soft_nms,
      report_unfused=z.report_unfused,
  )
  p = det.predictor
  if z.rpn_nms_thresh and p.rpn is not None:  # official OFFLINE_RPN_NMS_THRESH
    s = dataclasses.replace(p.rpn_settings, nms_thresh=z.rpn_nms_thresh)
    det.predictor = dataclasses.replace(p, rpn_settings=s)
  issues = IssueCounter("zero_shot")
  if z.annotations:
    metrics = evaluate_annotations(
        det,
        z.annotations,
        z.images,
        use_gt_boxes=z.boxes == "gt",
        split=z.split or None,
        embeddings=z.embeddings,
        max_images=z.max_images or None,
        base_classes=z.base_classes,
        vocabulary=z.vocabulary,
        on_error=policy,
        issues=issues,
        detections_out=os.path.join(workdir, "detections.json"),
    )
    if issues.total():
      metrics["data_issues"] = issues.report().splitlines()
    write_json(
        os.path.join(workdir, "zero_shot_metrics.json"),
        {k: v for k, v in metrics.items() if k != "per_category"},
    )
    parts = [p for p in ("novel", "base", "all") if f"AP50_{p}" in metrics]
    print(
        "[zero_shot] "
        + (
            "; ".join(
                f"{p}: AP50 {metrics[f'AP50_{p}']:.2f} AP {metrics[f'AP_{p}']:.2f}" for p in parts
            )
            or f"AP50 {metrics['AP50']:.2f} AP {metrics['AP']:.2f}"
        )
        + f" ({os.path.join(workdir, 'zero_shot_metrics.json')})",
        flush=True,
    )
    return metrics
  output = z.output or os.path.join(workdir, "zero_shot")
  dets = detect_folder(
      det,
      z.images,
      names,
      output,
      embeddings=z.embeddings,
      draw_threshold=z.draw_threshold,
      exemplars=classes,
      on_error=policy,
      issues=issues,
  )
  skipped = issues.counts
  out = {
      "num_detections": len(dets),
      "num_images": len(files),
      "num_skipped": sum(skipped.values()),
      "skipped": skipped,
  }
  print(summary_line(out, output), flush=True)
  return out


# ----------------------------------------------------------------------------- command line

# Flag help; names, types and defaults come from configs/zero_shot.py.
_HELP = {
    "checkpoint": "CLIP checkpoint (any format) or detector export dir",
    "images": "folder of images",
    "vocabulary": "comma-separated class names, @file.txt, coco_ovd or lvis",
    "exemplars": "json of classes given by example boxes (format: detection/exemplars.py)",
    "on_error": "bad images / records: skip (warn, count, go on) | strict (stop); "
    "'' = skip for a folder, strict with --annotations",
    "output": "output folder (PNGs + detections.json)",
    "rpn": "frozen RPN (stage='rpn' workdir or export); '' = sliding windows",
    "text_checkpoint": "CLIP checkpoint for the text tower",
    "embeddings": ".npy / official .pth [K, D] vocabulary embeddings",
    "source": "force the checkpoint format",
    "annotations": "COCO / LVIS-format json: evaluate instead of drawing",
    "boxes": "with --annotations: classify GT boxes or proposals",
    "split": "with --annotations: coco_ovd | lvis | '' (standard metrics)",
    "base_classes": "with --annotations: base classes (split name, all, a,b,c or @file); "
    "novel = the rest of --vocabulary",
    "max_images": "with --annotations: evaluate the first N images only (0 = all)",
    "test_size": "shorter side",
    "max_size": "longer side cap (also the padded size)",
    "score_thresh": "drop detections below",
    "draw_threshold": "draw only detections above",
    "nms_thresh": "per-class NMS IoU",
    "topk": "detections per image",
    "rpn_fusion": "'' | raw_logit | sigmoid",
    "report_unfused": "with rpn_fusion and NMS: report the un-fused score (official MODEL.CLIP.VIS)",
    "soft_nms": "gaussian soft-NMS instead of NMS",
    "rpn_nms_thresh": "RPN NMS IoU (official OFFLINE_RPN_NMS_THRESH); 0 = the RPN's own",
    "checkpoint_kind": "'detector': --checkpoint must be a detector export ('' = any)",
}
_CHOICES = {"boxes": ("gt", "rpn"), "on_error": ("", "skip", "strict")}
# The command line has no workdir, so its output folder gets a default of its own (the config's
# "" means <workdir>/zero_shot).
_TOOL_DEFAULTS = {"output": "zero_shot_out"}


def _define_flags() -> None:
  config_flags.define_flags(
      zero_shot_config.get_config,
      list(zero_shot_config.PRESETS),
      "folder",
      "zero_shot",
      _HELP,
      _CHOICES,
      _TOOL_DEFAULTS,
  )


def config_from_flags(values) -> ml_collections.ConfigDict:
  return config_flags.config_from_flags(
      values, zero_shot_config.get_config, "zero_shot", _TOOL_DEFAULTS
  )


def main(argv: Sequence[str]) -> None:
  del argv
  cfg = config_from_flags(flags.FLAGS)
  z = cfg.zero_shot
  if not z.checkpoint or not z.images:
    raise SystemExit("zero_shot: --checkpoint and --images are required")
  if not z.annotations and not z.vocabulary and not z.exemplars:
    raise SystemExit("zero_shot: --vocabulary or --exemplars is required without --annotations")
  try:
    out = run(cfg, z.output)
  except DataError as e:  # the user's files or records: one line naming them, no traceback
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  if z.annotations:
    print(json.dumps({k: v for k, v in out.items() if k != "per_category"}, indent=1))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
