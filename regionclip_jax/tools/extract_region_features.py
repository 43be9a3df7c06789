r"""Region embeddings of images: the official tools/extract_region_features.py.

  python -m regionclip_jax.tools.extract_region_features --checkpoint=CKPT --images=DIR \
      --rpn=RPN --output=DIR [--embeddings=EMB.pth | --vocabulary=a,b,c]
  ... --regions=gt --annotations=COCO.json     # the json's ground-truth boxes
  ... --regions=file --boxes=BOXES.json        # boxes of your own

Regions: the proposals of a frozen RPN (`--rpn`: an official RPN converted by `tools.convert`, or
a stage="rpn" workdir / export), the boxes of a COCO json, or a json of boxes per image, either
`{"a.jpg": [[x0, y0, x1, y1], ...], ...}` or `[{"file_name": "a.jpg", "boxes": [...]}, ...]`
(x0 y0 x1 y1 in original pixels; names relative to `--images`). A region's embedding is the
pretrained model's region path on the image resized as the official test transform (shorter side
800, longer <= 1333): RoIAlign on res4 -> res5 -> attnpool, the function zero-shot detection
classifies (`DetectorPredictor.region_outputs`).

Output, one `<output>/<stem>.npz` per image (stem: the file name without its last suffix; the
official script writes `<name up to its first dot>.pth` with torch.save), written atomically:
  boxes [R, 4] float32       x0 y0 x1 y1, original pixels (RPN boxes clipped to the image)
  feats [R, D] float32       region embeddings, attnpool output, not normalised (official)
  image_size [2] int32       original (height, width)
  scores [R] float32         RPN: objectness logits (the official script saves none)
  ann_ids, category_ids [R] int64   regions="gt" only
With `--embeddings` (official MODEL.CLIP.TEXT_EMB_PATH, [K, D]) or `--vocabulary`, only the
detections are kept (score threshold, per-class NMS, top-k; official), and also written:
  classes [R] int64          index into the embeddings
  probs [R, K+1] float32     softmax over the classes and background (last; official `probs`)
  scores [R] float32         detection score
A fine-tuned detector export as `--checkpoint` gives its own region features (its box regressor
moves the detections), scored alone, without a score ensemble.

Bad records (a missing, unreadable or degenerate image; boxes non-finite, of negative size,
outside the image by more than a pixel or not four numbers; a second record of an image or of an
output name): `--on_error=skip` warns
naming each and goes on, `strict` stops at the first with one line and exit status 1. Default:
skip for an image folder, strict with a json. The final line counts written and skipped images.
The flags are the fields of `configs/extract_region_features.py`'s `extract` section.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from configs import extract_region_features as extract_config
from regionclip_jax.data.images import decode_image, shortest_edge_size
from regionclip_jax.data.validation import DataError
from regionclip_jax.detection.builders import read_embeddings
from regionclip_jax.detection.classifier import text_logits
from regionclip_jax.detection.inference import make_classify_fn
from regionclip_jax.files import atomic_open
from regionclip_jax.models.checkpoints import CheckpointError
from regionclip_jax.tools import config_flags
from regionclip_jax.tools.zero_shot import ZeroShotDetector, parse_vocabulary
from regionclip_jax.tools.region_records import (
    NAME,
    Issues,
    Record,
    Refused,
    boxes_records,
    check_inside,
    coco_records,
    folder_records,
)

_BLOCK = 1024  # boxes per region call: bounds memory and the number of compiled shapes


def _bucket(n: int) -> int:
  """Padded region count: powers of two from 16 up to _BLOCK, then multiples of _BLOCK."""
  if n > _BLOCK:
    return -(-n // _BLOCK) * _BLOCK
  return max(16, 1 << max(n - 1, 0).bit_length())


class RegionFeatureExtractor:
  """The zero-shot detector's region path for one image at a time.

  `__call__(image uint8 [H,W,3], boxes [R,4] original px or None = RPN) -> dict` of the output
  arrays (module docstring) plus `index` [R'] int: rows of `boxes` the outputs are of.
  `text_emb` [K, D]: keep the classified detections only.
  """

  def __init__(
      self,
      detector: ZeroShotDetector,
      text_emb: Optional[np.ndarray] = None,
      *,
      num_regions: int = 0,
      rpn_nms_thresh: Optional[float] = None,
  ):
    p = detector.predictor
    if p.pretrained_variables is not None:
      p = p.without_ensemble()  # the official extraction scores the detector alone
    if p.rpn is not None:
      s = p.rpn_settings
      s = dataclasses.replace(
          s,
          nms_thresh=s.nms_thresh if rpn_nms_thresh is None else rpn_nms_thresh,
          post_nms_topk_test=num_regions or s.post_nms_topk_test,
      )
      p = dataclasses.replace(p, rpn_settings=s)
    self.detector, self.predictor = detector, p
    self.dim = detector.clip_config.embed_dim
    self.text_emb = None if text_emb is None else np.asarray(text_emb, np.float32)
    self._classify = None if text_emb is None else make_classify_fn(p.inference)

  def regions(self, images: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """images [1,P,P,3] preprocessed, boxes [R,4] resized px -> (feats [R,D], deltas [R,4])."""
    feats, deltas = [np.zeros((0, self.dim), np.float32)], [np.zeros((0, 4), np.float32)]
    for i in range(0, len(boxes), _BLOCK):
      blk = boxes[i : i + _BLOCK]
      padded = np.tile(np.asarray([0, 0, 1, 1], np.float32), (_bucket(len(blk)), 1))
      padded[: len(blk)] = blk
      f, d = self.predictor.region_outputs(images, padded[None])
      feats.append(np.asarray(f[0, : len(blk)], np.float32))
      deltas.append(np.asarray(d[0, : len(blk)], np.float32))
    return np.concatenate(feats), np.concatenate(deltas)

  def __call__(self, image: np.ndarray, boxes: Optional[np.ndarray] = None) -> dict:
    h, w = image.shape[:2]
    x, size, (sy, sx) = self.detector.preprocess(image)
    scale = np.asarray([sx, sy, sx, sy], np.float32)
    objectness = None
    if boxes is None:
      pb, logits, valid = (np.asarray(a[0]) for a in self.predictor.proposals(x, size))
      b, objectness = pb[valid].astype(np.float32), logits[valid].astype(np.float32)
    else:
      b = np.asarray(boxes, np.float32).reshape(-1, 4) * scale
    feats, deltas = self.regions(x, b)
    out = {"image_size": np.asarray([h, w], np.int32)}
    if self._classify is None:
      index = np.arange(len(b))
      if boxes is None:  # official: proposals back to original pixels, clipped, empty ones gone
        ob, index = _clip_nonempty(b / scale, h, w)
        out["scores"] = objectness[index]
      else:
        ob = np.asarray(boxes, np.float32).reshape(-1, 4)
      return dict(out, boxes=ob, feats=feats[index], index=index)
    n = _bucket(len(b))

    def pad(a, fill=0.0):  # [R, ...] -> [n, ...]
      return np.concatenate([a, np.full((n - len(a),) + a.shape[1:], fill, a.dtype)])

    fuse = objectness is not None and self.predictor.inference.rpn_fusion is not None
    det = self._classify(
        pad(feats)[None],
        pad(deltas)[None],
        pad(b)[None],
        pad(np.ones(len(b), bool), False)[None],
        size,
        self.text_emb,
        pad(objectness)[None] if fuse else None,
    )
    det = jax.tree.map(lambda a: np.asarray(a[0]), det)
    keep = det["valid"]
    ob, kept = _clip_nonempty(det["boxes"][keep] / scale, h, w)
    roi = det["roi_index"][keep][kept]
    logits = text_logits(feats[roi], self.text_emb, self.predictor.inference.temperature)
    return dict(
        out,
        boxes=ob,
        feats=feats[roi],
        classes=det["classes"][keep][kept].astype(np.int64),
        scores=det["scores"][keep][kept].astype(np.float32),
        probs=np.asarray(jax.nn.softmax(logits, -1), np.float32),
        index=roi,
    )


def _clip_nonempty(boxes: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """[R,4] -> (the boxes clipped to h x w whose width and height stay > 0 [R',4], their rows)."""
  b = np.minimum(np.maximum(boxes, 0), np.asarray([w, h, w, h], np.float32)).astype(np.float32)
  rows = np.nonzero((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))[0]
  return b[rows], rows


def extract_records(
    extractor: RegionFeatureExtractor, records: Sequence[Record], output: str, issues: Issues
) -> dict:
  """Writes `<output>/<stem>.npz` per record -> {"written": n, "regions": total boxes}."""
  os.makedirs(output, exist_ok=True)
  written = regions = 0
  for rec in records:
    if not os.path.isfile(rec.path):
      issues("missing_image", rec.where, f"no file {rec.path}")
      continue
    img = decode_image(rec.path, policy="skip", counter=None, where=rec.where)
    if img is None:
      issues("corrupt_image", rec.where, f"{rec.path} is not a readable image")
      continue
    h, w = img.shape[:2]
    try:
      if (
          min(shortest_edge_size(h, w, extractor.detector.test_size, extractor.detector.max_size))
          < 1
      ):
        raise Refused("degenerate_image", f"{w}x{h} px resizes to an empty image")
      if rec.boxes is not None:
        check_inside(rec.boxes, h, w)
    except Refused as r:
      issues(r.kind, rec.where, r.detail)
      continue
    arrays = extractor(img, rec.boxes)
    index = arrays.pop("index")
    arrays.update({k: v[index] for k, v in rec.extra.items()})
    with atomic_open(os.path.join(output, rec.stem + ".npz"), "wb") as f:
      np.savez(f, **arrays)
    written += 1
    regions += len(arrays["boxes"])
  return {"written": written, "regions": regions}


def check_settings(e) -> str:
  """One-line ValueError for a setting that cannot work; -> the bad-record policy."""
  need = {
      "rpn": ("rpn", "--rpn"),
      "gt": ("annotations", "--annotations"),
      "file": ("boxes", "--boxes"),
  }
  if e.regions not in need:
    raise ValueError(f"{NAME}: --regions must be one of {sorted(need)}, got {e.regions!r}")
  for key, flag in (("checkpoint", "--checkpoint"), ("images", "--images"), need[e.regions]):
    if not e[key]:
      raise ValueError(f"{NAME}: {flag} is required (--regions={e.regions})")
  if e.rpn_fusion not in ("", "raw_logit", "sigmoid"):
    raise ValueError(f"{NAME}: --rpn_fusion must be '', raw_logit or sigmoid, got {e.rpn_fusion!r}")
  policy = e.on_error or ("strict" if (e.annotations or e.regions == "file") else "skip")
  if policy not in ("skip", "strict"):
    raise ValueError(f"{NAME}: --on_error must be skip or strict, got {e.on_error!r}")
  return policy


def read_records(e, issues: Issues) -> tuple[list[Record], int]:
  """The records the settings name -> (records, files ignored in a folder)."""
  if e.regions == "file":
    return boxes_records(e.boxes, e.images, issues, e.max_images), 0
  if e.annotations:
    return coco_records(e.annotations, e.images, e.regions == "gt", issues, e.max_images), 0
  return folder_records(e.images, issues, e.max_images)


def text_embeddings(detector: ZeroShotDetector, e) -> Optional[np.ndarray]:
  """[K, D] from --vocabulary (text tower, or --embeddings in its order) or --embeddings; None."""
  if e.vocabulary:
    return detector.text_embeddings(parse_vocabulary(e.vocabulary), e.embeddings)
  if e.embeddings:
    return read_embeddings(e.embeddings, None, detector.clip_config.embed_dim)
  return None


def run(config, workdir: str | None = None) -> dict:
  """The job (task "extract_region_features"): -> summary {"written", "skipped", "regions",
  "issues" (kind -> count), "ignored_files", "output"}."""
  e = config.extract
  issues = Issues(check_settings(e))
  records, ignored = read_records(e, issues)  # json problems stop before the model loads
  detector = ZeroShotDetector(
      e.checkpoint,
      rpn=e.rpn if e.regions == "rpn" else "",
      text_checkpoint=e.text_checkpoint,
      source=e.source or None,
      test_size=e.test_size,
      max_size=e.max_size,
      score_thresh=e.score_thresh,
      nms_thresh=e.nms_thresh,
      topk=e.detections_per_image,
      rpn_fusion=e.rpn_fusion or None,
  )
  extractor = RegionFeatureExtractor(
      detector,
      text_embeddings(detector, e),
      num_regions=e.num_regions,
      rpn_nms_thresh=e.rpn_nms_thresh,
  )
  if not e.output and not workdir:
    workdir = tempfile.mkdtemp(prefix=f"regionclip_{NAME}_")
  output = e.output or os.path.join(workdir, "region_features")
  done = extract_records(extractor, records, output, issues)
  summary = dict(
      done,
      skipped=issues.counter.total(),
      issues=issues.counter.counts,
      ignored_files=ignored,
      output=output,
  )
  print(summary_line(summary), flush=True)
  return summary


def summary_line(s: dict) -> str:
  kinds = ", ".join(f"{k} {n}" for k, n in sorted(s["issues"].items()))
  line = f"{NAME}: wrote {s['written']} images ({s['regions']} regions) to {s['output']}"
  line += f"; skipped {s['skipped']}" + (f" ({kinds})" if kinds else "")
  if s["ignored_files"]:
    line += f"; ignored {s['ignored_files']} files without an image extension"
  return line


# ----------------------------------------------------------------------------- command line

_HELP = {
    "checkpoint": "CLIP checkpoint (any format) or detector export dir",
    "images": "folder of images (json file names are relative to it)",
    "output": "output folder (<stem>.npz per image)",
    "regions": "rpn (--rpn) | gt (--annotations) | file (--boxes)",
    "rpn": "frozen RPN: converted official RPN, stage='rpn' workdir or export",
    "annotations": "COCO json: its images, and with --regions=gt its boxes",
    "boxes": "json of boxes per image, x0 y0 x1 y1 original px",
    "embeddings": ".npy / official .pth [K, D]: keep the classified detections",
    "vocabulary": "a,b,c or @file.txt: the same with the text tower",
    "text_checkpoint": "CLIP checkpoint for the text tower",
    "source": "force the checkpoint format",
    "test_size": "shorter side",
    "max_size": "longer side cap",
    "num_regions": "RPN proposals per image (0 = the RPN's own test top-k)",
    "rpn_nms_thresh": "RPN NMS IoU",
    "score_thresh": "with embeddings: drop detections below",
    "nms_thresh": "with embeddings: per-class NMS IoU",
    "detections_per_image": "with embeddings: top-k",
    "rpn_fusion": "with embeddings: '' | raw_logit | sigmoid",
    "on_error": "skip | strict ('' = skip for a folder, strict for a json)",
    "max_images": "first N images only (0 = all)",
}
_CHOICES = {"regions": ("rpn", "gt", "file")}
_TOOL_DEFAULTS = {"output": "region_features"}  # no workdir on the command line


def _define_flags() -> None:
  config_flags.define_flags(
      extract_config.get_config,
      list(extract_config.PRESETS),
      "official",
      "extract",
      _HELP,
      _CHOICES,
      _TOOL_DEFAULTS,
  )


def config_from_flags(values) -> ml_collections.ConfigDict:
  return config_flags.config_from_flags(
      values, extract_config.get_config, "extract", _TOOL_DEFAULTS
  )


def main(argv: Sequence[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  cfg = config_from_flags(flags.FLAGS)
  try:
    check_settings(cfg.extract)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  try:
    summary = run(cfg)
  except (DataError, CheckpointError, FileNotFoundError) as e:
    raise SystemExit(f"{NAME}: error: {e}") from None  # one line, exit status 1
  if summary["written"] == 0 and summary["skipped"]:
    raise SystemExit(1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
