r"""Open-vocabulary detection on your own images with your own words (no fine-tuning needed).

  python -m regionclip_jax.tools.zero_shot --checkpoint=CKPT --images=DIR \
      --vocabulary="cat,dog,person" [--rpn=RPN_WORKDIR] [--output=DIR] [--preset=coco_gt]

Writes `<output>/<image>.png` (boxes + "name score") and `<output>/detections.json`
(COCO-style results with `file_name` and `category_name`, boxes in original pixels).

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
vocabulary order).

The flags are the fields of `configs/zero_shot.py`'s `zero_shot` section (same names and
defaults); `--preset` picks the config preset the given flags override. As a `main.py` task
(`--config=configs/zero_shot.py`), `run(config, workdir)` is the same job.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Optional, Sequence

import ml_collections
import numpy as np
from absl import app, flags
from PIL import Image

from configs import zero_shot as zero_shot_config
from regionclip_jax.data.class_lists import resolve_class_list
from regionclip_jax.data.validation import DataError
from regionclip_jax.detection.zero_shot import ZeroShotDetector, sliding_window_boxes
from regionclip_jax.evaluation.coco_eval import evaluate_coco
from regionclip_jax.evaluation.detections_io import write_json
from regionclip_jax.evaluation.visualize import draw_detections
from regionclip_jax.models.prompts import read_concepts_file

__all__ = [
    "ZeroShotDetector",
    "detect_folder",
    "evaluate_annotations",
    "parse_vocabulary",
    "run",
    "sliding_window_boxes",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def parse_vocabulary(text: str) -> list[str]:
  """ "a,b,c" or "@file.txt" (one name per line; "name,count" rows allowed) -> names."""
  if text.startswith("@"):
    names = read_concepts_file(text[1:])
  else:
    names = [t.strip() for t in text.split(",")]
  names = [n for n in names if n]
  if not names:
    raise ValueError("zero_shot: --vocabulary is empty; give comma-separated names or @file.txt")
  if len(set(names)) != len(names):
    raise ValueError(f"zero_shot: --vocabulary has duplicate names: {names}")
  return names


def _read_image(path: str) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def detect_folder(
    detector: ZeroShotDetector,
    images_dir: str,
    names: Sequence[str],
    output: str,
    *,
    embeddings: str = "",
    draw_threshold: float = 0.0,
) -> list[dict]:
  """Runs every image of `images_dir`, writes a PNG per image and detections.json -> detections."""
  files = sorted(f for f in os.listdir(images_dir) if f.lower().endswith(IMAGE_EXTS))
  if not files:
    raise FileNotFoundError(f"zero_shot: no images ({', '.join(IMAGE_EXTS)}) in {images_dir}")
  emb = detector.text_embeddings(names, embeddings)
  os.makedirs(output, exist_ok=True)
  results = []
  for i, f in enumerate(files):
    img = _read_image(os.path.join(images_dir, f))
    d = detector.detect(img, emb, names=names)
    draw_detections(
        img,
        d["boxes"],
        [names[c] for c in d["classes"]],
        d["scores"],
        score_threshold=draw_threshold,
        upscale=1,
        path=os.path.join(output, os.path.splitext(f)[0] + ".png"),
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
) -> dict:
  """Paper zero-shot protocol on COCO / LVIS-format data: classify GT boxes (or proposals) of every
  image against all the json's categories and score with pycocotools. `base_classes` (a split
  name, "all", "a,b,c" or "@file.txt", as the finetune job's data.base_classes) and `vocabulary`
  (same syntax; "" = every category) split an own dataset's classes into base / novel (AP50 and
  AP of each) in place of `split`; the ground truth is cut to the vocabulary."""
  gt = json.load(open(annotations))
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
  dets = []
  for img in gt["images"][:max_images]:
    anns = by_image.get(img["id"], [])
    boxes = None
    if use_gt_boxes:
      if not anns:
        continue
      boxes = np.asarray(
          [
              [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
              for a in anns
          ],
          np.float32,
      )
    file = os.path.join(images_dir, img["file_name"])
    if not os.path.isfile(file):  # one line naming the record, not a traceback from PIL
      raise DataError(
          f"{__name__}: {annotations} image {img['id']} ({img['file_name']}): missing_image: "
          f"no file {file}"
      )
    d = detector.detect(_read_image(file), emb, boxes, names=names)
    for b, s, c in zip(d["boxes"], d["scores"], d["classes"]):
      dets.append(
          {
              "image_id": img["id"],
              "category_id": int(cats[int(c)]["id"]),
              "score": float(s),
              "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
          }
      )
  if max_images is not None:
    keep = {im["id"] for im in gt["images"][:max_images]}
    gt = dict(
        gt,
        images=[im for im in gt["images"] if im["id"] in keep],
        annotations=[a for a in gt["annotations"] if a["image_id"] in keep],
    )
  return evaluate_coco(gt, dets, split=split, **names_split)


def run(config, workdir: str | None = None) -> dict:
  """The zero-shot job (task "zero_shot", configs/zero_shot.py; the command line builds the same
  config): evaluate on `zero_shot.annotations` (-> metrics, also in
  `<workdir>/zero_shot_metrics.json`), else detect on the `zero_shot.images` folder (-> PNGs +
  detections.json in `zero_shot.output`, default `<workdir>/zero_shot`)."""
  z = config.zero_shot
  if not workdir:
    workdir = tempfile.mkdtemp(prefix="regionclip_zero_shot_")
    print(f"[zero_shot] workdir {workdir}", flush=True)
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
  )
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
    )
    os.makedirs(workdir, exist_ok=True)
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
  names = parse_vocabulary(z.vocabulary)
  dets = detect_folder(
      det,
      z.images,
      names,
      z.output or os.path.join(workdir, "zero_shot"),
      embeddings=z.embeddings,
      draw_threshold=z.draw_threshold,
  )
  return {"num_detections": len(dets)}


# ----------------------------------------------------------------------------- command line

# Flag help; names, types and defaults come from configs/zero_shot.py.
_HELP = {
    "checkpoint": "CLIP checkpoint (any format) or detector export dir",
    "images": "folder of images",
    "vocabulary": "comma-separated class names, or @file.txt",
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
    "soft_nms": "gaussian soft-NMS instead of NMS",
}
_CHOICES = {"boxes": ("gt", "rpn")}
# The command line has no workdir, so its output folder gets a default of its own (the config's
# "" means <workdir>/zero_shot).
_TOOL_DEFAULTS = {"output": "zero_shot_out"}


def _define_flags() -> None:
  """One absl flag per field of the default preset's `zero_shot` section, plus `--preset`."""
  flags.DEFINE_enum(
      "preset", "folder", list(zero_shot_config.PRESETS), "configs/zero_shot.py preset"
  )
  for name, default in zero_shot_config.get_config().zero_shot.items():
    default = _TOOL_DEFAULTS.get(name, default)
    help_ = _HELP.get(name, name)
    if name in _CHOICES:
      flags.DEFINE_enum(name, default, _CHOICES[name], help_)
    elif isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_)
    elif isinstance(default, float):
      flags.DEFINE_float(name, default, help_)
    else:
      flags.DEFINE_string(name, default, help_)


def config_from_flags(values) -> ml_collections.ConfigDict:
  """`get_config(--preset)` with the `zero_shot` fields given on the command line (and the
  tool's own defaults) written over it."""
  cfg = zero_shot_config.get_config(values.preset)
  for name in cfg.zero_shot.keys():
    if values[name].present or name in _TOOL_DEFAULTS:
      cfg.zero_shot[name] = values[name].value
  return cfg


def main(argv: Sequence[str]) -> None:
  del argv
  cfg = config_from_flags(flags.FLAGS)
  z = cfg.zero_shot
  if not z.checkpoint or not z.images:
    raise SystemExit("zero_shot: --checkpoint and --images are required")
  if not z.annotations and not z.vocabulary:
    raise SystemExit("zero_shot: --vocabulary is required without --annotations")
  out = run(cfg, z.output)
  if z.annotations:
    print(json.dumps({k: v for k, v in out.items() if k != "per_category"}, indent=1))
  else:
    print(f"zero_shot: {out['num_detections']} detections written to {z.output}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
