"""Detector evaluation: COCO-style AP with pycocotools over a record source, and example grids.

Batches are padded to a fixed size so the predictor's compiled programs are reused across the
whole test split (and by `draw_examples`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image

from regionclip_jax import files
from regionclip_jax.data.transforms import DETECTION_KEYS, apply_transforms, normalize_batch
from regionclip_jax.detection.predictor import DetectorPredictor
from regionclip_jax.evaluation.coco_eval import evaluate_coco
from regionclip_jax.evaluation.detections_io import detections_to_coco
from regionclip_jax.evaluation.proposal_recall import MAX_DETS, proposal_recall
from regionclip_jax.evaluation.visualize import draw_detections


def draw_examples(
    predictor: DetectorPredictor,
    source,
    transforms,
    class_names: Sequence[str],
    text_emb,
    novel_names: Sequence[str],
    num: int,
    path: str,
    score_threshold: float = 0.3,
    batch_size: Optional[int] = None,
) -> np.ndarray:
  """A PNG grid of the first `num` test scenes: ground truth (left) and detections scoring
  >= score_threshold (right), novel classes in the novel colour. `batch_size`: pad the batch to
  the evaluation's, whose compiled programs are then reused. -> the grid [H, W, 3] uint8."""
  recs = [apply_transforms(source[i], transforms) for i in range(min(num, len(source)))]
  padded = recs + [recs[-1]] * max(0, (batch_size or 0) - len(recs))
  b = {k: np.stack([np.asarray(r[k]) for r in padded]) for k in DETECTION_KEYS}
  out = predictor(
      b["image"], b["image_size"], text_emb, seen=[n not in novel_names for n in class_names]
  )
  rows = []
  for i in range(len(recs)):
    kw = dict(class_names=class_names, novel_names=novel_names, clip_normalised=True)
    gt = draw_detections(b["image"][i], b["boxes"][i], b["labels"][i], valid=b["box_mask"][i], **kw)
    det = draw_detections(
        b["image"][i],
        out["boxes"][i],
        out["classes"][i],
        out["scores"][i],
        valid=out["valid"][i],
        score_threshold=score_threshold,
        **kw,
    )
    gap = np.full((gt.shape[0], 8, 3), 255, np.uint8)
    rows.append(np.concatenate([gt, gap, det], axis=1))
  sep = np.full((8, rows[0].shape[1], 3), 255, np.uint8)
  grid = np.concatenate([x for r in rows for x in (r, sep)][:-1], axis=0)
  with files.atomic_open(path, "wb") as f:
    Image.fromarray(grid).save(f, format="PNG")
  return grid


def _padded_batches(source, transforms, n: int, batch_size: int):
  """-> (batch of DETECTION_KEYS [batch_size, ...], number of padded copies at its end) over the
  first `n` records; records a skip-mode source returned as None (unreadable image, counted in
  its IssueCounter) are left out."""
  for start in range(0, n, batch_size):
    recs = [source[i] for i in range(start, min(n, start + batch_size))]
    recs = [apply_transforms(r, transforms) for r in recs if r is not None]
    if not recs:
      continue
    pad = batch_size - len(recs)
    recs = recs + [recs[-1]] * pad  # static batch shape; padded copies are dropped by the caller
    yield {k: np.stack([np.asarray(r[k]) for r in recs]) for k in DETECTION_KEYS}, pad


def evaluate_proposals(
    propose,
    source,
    transforms,
    class_names: Sequence[str],
    base_names: Sequence[str],
    novel_names: Sequence[str],
    *,
    batch_size: int = 8,
    max_dets: Sequence[int] = MAX_DETS,
) -> dict:
  """Class-agnostic recall of an RPN's proposals on every record of `source`.

  propose: `fn(images [N,S,S,3] CLIP-normalised float, image_sizes [N,2]) -> (boxes [N,P,4],
  scores [N,P], valid [N,P])`, e.g. `DetectorPredictor.proposals`.
  -> {"AR@100_base", "AR@300_base", "AR@1000_base", the same for novel, "num_gt_base",
  "num_gt_novel"}: `proposal_recall` on the ground truth of the base and of the novel classes.
  """
  batches, props = [], []
  for b, pad in _padded_batches(source, transforms, len(source), batch_size):
    sizes = np.asarray(b["image_size"], np.float32)
    images = normalize_batch({"image": jnp.asarray(b["image"]), "image_size": sizes})["image"]
    boxes, scores, valid = (np.asarray(x) for x in propose(images, sizes))
    keep = batch_size - pad
    b = {k: v[:keep] for k, v in b.items()}
    batches.append(b)
    for i in range(keep):
      for box, s in zip(boxes[i][valid[i]], scores[i][valid[i]]):
        x1, y1, x2, y2 = (float(v) for v in box)
        props.append(
            {
                "image_id": int(b["image_id"][i]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(s),
            }
        )
  gt = records_to_coco_gt(batches, class_names)
  out: dict = {}
  for part, names in (("base", base_names), ("novel", novel_names)):
    ids = [i + 1 for i, c in enumerate(class_names) if c in set(names)]
    r = proposal_recall(gt, props, ids, max_dets)
    out.update({f"{k}_{part}": v for k, v in r.items()})
  return out


def records_to_coco_gt(batches: Sequence[dict], class_names: Sequence[str]) -> dict:
  """Padded batches (`image_id`, `image_size`, `boxes`, `box_mask`, `labels` as class indices)
  -> COCO ground-truth dict with category ids = class index + 1."""
  images, anns = [], []
  for b in batches:
    for i in range(len(b["image_id"])):
      h, w = (int(x) for x in b["image_size"][i])
      iid = int(b["image_id"][i])
      images.append({"id": iid, "height": h, "width": w})
      for box, lab, m in zip(b["boxes"][i], b["labels"][i], b["box_mask"][i]):
        if m and lab >= 0:
          x1, y1, x2, y2 = (float(v) for v in box)
          anns.append(
              {
                  "id": len(anns) + 1,
                  "image_id": iid,
                  "category_id": int(lab) + 1,
                  "bbox": [x1, y1, x2 - x1, y2 - y1],
                  "area": (x2 - x1) * (y2 - y1),
                  "iscrowd": 0,
              }
          )
  cats = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
  return {"images": images, "annotations": anns, "categories": cats}


def evaluate(
    predictor: DetectorPredictor,
    source,
    transforms,
    class_names: Sequence[str],
    text_emb,
    base_names: Sequence[str],
    novel_names: Sequence[str],
    *,
    batch_size: int = 8,
    use_gt_boxes: bool = False,
    max_images: Optional[int] = None,
    also_alone: bool = False,
) -> dict:
  """Detect on every record of `source` with the whole vocabulary and score with pycocotools:
  the standard COCO stats plus AP50_novel / AP50_base / AP50_all. `use_gt_boxes`: classify the
  ground-truth boxes instead of RPN proposals (zero-shot region recognition protocol).
  `also_alone` (a predictor with the score ensemble): plus "without_ensemble", the same metrics
  for the detector scored alone, from the same pass over `source`."""
  n = len(source) if max_images is None else min(len(source), max_images)
  also_alone = also_alone and predictor.pretrained_variables is not None
  batches, dets, dets_alone = [], [], []
  cats = [{"id": i + 1, "name": c} for i, c in enumerate(class_names)]
  seen = np.asarray([c in base_names for c in class_names])
  for b, pad in _padded_batches(source, transforms, n, batch_size):
    boxes = b["boxes"] if use_gt_boxes else None
    out = predictor(
        b["image"],
        b["image_size"],
        text_emb,
        boxes=boxes,
        box_valid=b["box_mask"] if use_gt_boxes else None,
        seen=seen,
        also_alone=also_alone,
    )
    keep = slice(0, batch_size - pad)
    b = {k: v[keep] for k, v in b.items()}
    batches.append(b)
    for o, into in ((out, dets), (out.get("alone"), dets_alone)):
      if o is not None:
        into += detections_to_coco(
            b["image_id"],
            o["boxes"][keep],
            o["scores"][keep],
            o["classes"][keep],
            o["valid"][keep],
            cats,
        )

  def score(detections):  # a fresh ground-truth dict per call: pycocotools marks its entries
    gt = records_to_coco_gt(batches, class_names)
    return evaluate_coco(
        gt, detections, split=None, base_names=list(base_names), novel_names=list(novel_names)
    )

  metrics = score(dets)
  if also_alone:
    metrics["without_ensemble"] = score(dets_alone)
  return metrics
