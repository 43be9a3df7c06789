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
import os
import sys
import tempfile
from typing import Optional, Sequence

import ml_collections
from absl import app, flags

from configs import zero_shot as zero_shot_config
from regionclip_jax.data import categories
from regionclip_jax.data.validation import DataError, IssueCounter, check_policy, read_names
from regionclip_jax.detection.exemplars import (
    ExemplarClass,
    read_exemplars,
    vocabulary_with_exemplars,
)
from regionclip_jax.detection.export import read_meta
from regionclip_jax.detection.zero_shot import ZeroShotDetector, sliding_window_boxes
from regionclip_jax.evaluation.visualize import draw_detections
from regionclip_jax.files import write_json
from regionclip_jax.tools import config_flags
from regionclip_jax.tools.zero_shot_inputs import (
    ImageProblem,
    bad_record,
    evaluate_annotations,
    list_images,
    read_image,
)

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

BUILTIN_VOCABULARIES = {
    "coco_ovd": lambda: list(categories.COCO_OVD_ALL),
    "lvis": lambda: [
        c["name"] for c in sorted(categories.read_lvis_v1_categories(), key=lambda c: c["id"])
    ],
}


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
      bad_record(on_error, issues, e.kind, path, e.detail)
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
