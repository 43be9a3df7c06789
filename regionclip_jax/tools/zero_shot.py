r"""Open-vocabulary detection on your own images with your own words (no fine-tuning needed).

  python -m regionclip_jax.tools.zero_shot --checkpoint=CKPT --images=DIR \
      --vocabulary="cat,dog,person" [--rpn=RPN_WORKDIR] [--output=DIR]

Writes `<output>/<image>.png` (boxes + "name score") and `<output>/detections.json`
(COCO-style results with `file_name` and `category_name`, boxes in original pixels).

CKPT: any CLIP checkpoint `models.clip.load` reads (OpenAI .pt, HF / open_clip, converted dir,
official RegionCLIP .pth) — the paper's zero-shot protocol: region embeddings (RoIAlign on res4
-> layer4 -> attnpool) of proposals, classified against the vocabulary's 81-prompt text embeddings
— or a fine-tuned detector's `export/` directory (then its box regressor is applied too).
Proposals: a frozen RPN (`--rpn`, a stage="rpn" workdir or its export) or, without one, a
multi-scale sliding window (a weak fallback: scores then come from CLIP alone). With
`--annotations=GT.json` the images' ground-truth boxes (`--boxes=gt`) or the RPN proposals are
classified and scored with pycocotools (AP50 novel / base / all with `--split`).
Vocabulary text embeddings come from the checkpoint's text tower, `--text_checkpoint`, or
`--embeddings=FILE.npy` ([K, D], in vocabulary order).
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def parse_vocabulary(text: str) -> list[str]:
  """ "a,b,c" or "@file.txt" (one name per line; "name,count" rows allowed) -> names."""
  if text.startswith("@"):
    from regionclip_jax.pretrain.prompts import read_concepts_file

    names = read_concepts_file(text[1:])
  else:
    names = [t.strip() for t in text.split(",")]
  names = [n for n in names if n]
  if not names:
    raise ValueError("zero_shot: --vocabulary is empty; give comma-separated names or @file.txt")
  if len(set(names)) != len(names):
    raise ValueError(f"zero_shot: --vocabulary has duplicate names: {names}")
  return names


def sliding_window_boxes(
    height: int, width: int, fractions=(0.2, 0.4, 0.7), aspect_ratios=(0.5, 1.0, 2.0)
) -> np.ndarray:
  """Fallback proposals [R, 4]: square-area windows of `fraction * shorter side` at stride half
  their size, each aspect ratio (h / w), clipped to the image."""
  short = min(height, width)
  out = []
  for f in fractions:
    s = max(8.0, f * short)
    step = s / 2
    for ar in aspect_ratios:
      w, h = s / np.sqrt(ar), s * np.sqrt(ar)
      for cy in np.arange(h / 2, max(height - h / 2, h / 2) + 1e-3, step):
        for cx in np.arange(w / 2, max(width - w / 2, w / 2) + 1e-3, step):
          out.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
  b = np.asarray(out, np.float32)
  b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
  b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
  return b


class ZeroShotDetector:
  """Region model + optional frozen RPN + text encoder for vocabularies.

  `detect(image_uint8 [H,W,3], text_emb [K,D], boxes=None, names=None) -> dict(boxes [T,4]
  original px, scores, classes)`; `names` is required for an export with the score ensemble.
  """

  def __init__(
      self,
      checkpoint: str,
      *,
      rpn: str = "",
      text_checkpoint: str = "",
      source: Optional[str] = None,
      test_size: int = 800,
      max_size: int = 1333,
      score_thresh: float = 0.05,
      nms_thresh: float = 0.5,
      topk: int = 100,
      rpn_fusion: Optional[str] = None,
      soft_nms: bool = False,
      temperature: Optional[float] = None,
      pooler_resolution: Optional[int] = None,
  ):
    from regionclip_jax.detection import builders
    from regionclip_jax.detection.finetune import load_rpn
    from regionclip_jax.detection.predictor import DetectorPredictor
    from regionclip_jax.detection.settings import InferenceSettings

    self.test_size, self.max_size = test_size, max_size
    self.pad = -(-max_size // 32) * 32
    self._text = None
    pretrained, weights, self.trained_names = None, None, frozenset()
    if builders.is_export(checkpoint):
      det, variables, meta = builders.load_export(checkpoint)
      apply_deltas = True
      # an export fine-tuned with the score ensemble carries its frozen init and weights
      pretrained = builders.load_export_pretrained(checkpoint)
      if (pretrained is None) != (not meta.get("pretrained_score_weights")):
        raise ValueError(
            f"zero_shot: {checkpoint}: {builders.EXPORT_META} pretrained_score_weights "
            f"= {meta.get('pretrained_score_weights')} but {builders.EXPORT_PRETRAINED} is "
            f"{'missing' if pretrained is None else 'there'}; the score ensemble needs both"
        )
      if pretrained is not None:
        weights = tuple(meta["pretrained_score_weights"])
      self.trained_names = frozenset(meta.get("base_names", ()))
      # the temperature the detector was fine-tuned with, unless the caller overrides it
      temperature = meta.get("temperature") if temperature is None else temperature
      from regionclip_jax.models.clip import CLIPConfig

      self.clip_config = CLIPConfig.from_dict(meta["clip_config"])
    else:
      self.clip_config, clip_params = builders.load_clip_params(checkpoint, source)
      v = self.clip_config.vision
      res = pooler_resolution or 2 * (v.image_size // 32)
      det = builders.build_detector(self.clip_config, freeze_at=0, pooler_resolution=res)
      variables = builders.with_backbone(builders.init_detector(det, 64), clip_params)
      apply_deltas = False  # no trained box regressor: boxes are the proposals (official GT/RPN zs)
      self._text = (self.clip_config, clip_params)
    temperature = 0.01 if temperature is None else temperature  # official CLSS_TEMP
    if text_checkpoint:
      self._text = builders.load_clip_params(text_checkpoint, source)
    settings = InferenceSettings(
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        topk=topk,
        soft_nms_enabled=soft_nms,
        rpn_fusion=rpn_fusion or None,
        apply_deltas=apply_deltas,
        temperature=temperature,
        max_candidates=2000,
        pretrained_score_weights=weights,
    )
    rpn_model = gen = rpn_vars = None
    if rpn:
      rpn_model, gen, rpn_vars = load_rpn(rpn)
    self.predictor = DetectorPredictor(
        det, variables, settings, rpn_model, rpn_vars, gen, pretrained_variables=pretrained
    )

  def text_embeddings(self, names: Sequence[str], embeddings: str = "") -> np.ndarray:
    from regionclip_jax.detection import builders

    if embeddings:
      return builders.read_embeddings(embeddings, len(names))
    if self._text is None or "transformer" not in self._text[1]:
      raise ValueError(
          "zero_shot: the checkpoint has no text tower; pass --text_checkpoint or --embeddings"
      )
    return builders.class_embeddings(names, *self._text)

  def preprocess(self, image: np.ndarray):
    """uint8 [H,W,3] -> (normalised padded [1,P,P,3], image_size [1,2], scale)."""
    from regionclip_jax.data.transforms import resize_image, shortest_edge_size
    from regionclip_jax.models.clip import normalize_images

    h, w = image.shape[:2]
    nh, nw = shortest_edge_size(h, w, self.test_size, self.max_size)
    img = resize_image(np.ascontiguousarray(image[..., :3]), nh, nw, "bilinear")
    x = np.zeros((1, self.pad, self.pad, 3), np.float32)
    x[0, :nh, :nw] = normalize_images(img)
    return x, np.asarray([[nh, nw]], np.float32), (nh / h, nw / w)

  def detect(
      self,
      image: np.ndarray,
      text_emb: np.ndarray,
      boxes: Optional[np.ndarray] = None,
      names: Optional[Sequence[str]] = None,
  ) -> dict:
    """boxes [R,4] in original pixels to classify given regions; else RPN / sliding window.
    names [K] (the vocabulary of text_emb): needed by an export with the score ensemble, whose
    classes seen in fine-tuning are weighted differently from the rest."""
    x, size, (sy, sx) = self.preprocess(image)
    scale = np.asarray([sx, sy, sx, sy], np.float32)
    if boxes is not None:
      b = (np.asarray(boxes, np.float32).reshape(-1, 4) * scale)[None]
    elif self.predictor.rpn is None:
      b = sliding_window_boxes(int(size[0, 0]), int(size[0, 1]))[None]
    else:
      b = None
    seen = None if names is None else np.asarray([n in self.trained_names for n in names])
    out = self.predictor(
        x,
        size,
        text_emb,
        boxes=b,
        box_valid=None if b is None else np.ones(b.shape[:2], bool),
        seen=seen,
    )
    keep = out["valid"][0]
    return {
        "boxes": out["boxes"][0][keep] / scale,
        "scores": out["scores"][0][keep],
        "classes": out["classes"][0][keep],
    }


def _read_image(path: str) -> np.ndarray:
  from PIL import Image

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
  from regionclip_jax.evaluation.detections_io import write_json
  from regionclip_jax.evaluation.visualize import draw_detections

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
) -> dict:
  """Paper zero-shot protocol on COCO / LVIS-format data: classify GT boxes (or proposals) of every
  image against all the json's categories and score with pycocotools."""
  from regionclip_jax.evaluation.coco_eval import evaluate_coco

  gt = json.load(open(annotations))
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
    d = detector.detect(
        _read_image(os.path.join(images_dir, img["file_name"])), emb, boxes, names=names
    )
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
  return evaluate_coco(gt, dets, split=split)


def run(config, workdir: str) -> dict:
  """Entry for stage="zero_shot" (configs/zero_shot.py, via detection.run)."""
  z = config.zero_shot
  det = ZeroShotDetector(
      z.checkpoint,
      rpn=z.rpn,
      text_checkpoint=z.text_checkpoint,
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
    )
    os.makedirs(workdir, exist_ok=True)
    from regionclip_jax.evaluation.detections_io import write_json

    write_json(
        os.path.join(workdir, "zero_shot_metrics.json"),
        {k: v for k, v in metrics.items() if k != "per_category"},
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


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags

  F = flags.FLAGS
  if not F.checkpoint or not F.images:
    raise SystemExit("zero_shot: --checkpoint and --images are required")
  det = ZeroShotDetector(
      F.checkpoint,
      rpn=F.rpn,
      text_checkpoint=F.text_checkpoint,
      source=F.source or None,
      test_size=F.test_size,
      max_size=F.max_size,
      score_thresh=F.score_thresh,
      nms_thresh=F.nms_thresh,
      topk=F.topk,
      rpn_fusion=F.rpn_fusion or None,
      soft_nms=F.soft_nms,
  )
  if F.annotations:
    m = evaluate_annotations(
        det,
        F.annotations,
        F.images,
        use_gt_boxes=F.boxes == "gt",
        split=F.split or None,
        embeddings=F.embeddings,
    )
    print(json.dumps({k: v for k, v in m.items() if k != "per_category"}, indent=1))
    return
  if not F.vocabulary:
    raise SystemExit("zero_shot: --vocabulary is required without --annotations")
  dets = detect_folder(
      det,
      F.images,
      parse_vocabulary(F.vocabulary),
      F.output,
      embeddings=F.embeddings,
      draw_threshold=F.draw_threshold,
  )
  print(f"zero_shot: {len(dets)} detections written to {F.output}")


def _define_flags() -> None:
  from absl import flags

  flags.DEFINE_string("checkpoint", None, "CLIP checkpoint (any format) or detector export dir")
  flags.DEFINE_string("images", None, "folder of images")
  flags.DEFINE_string("vocabulary", "", "comma-separated class names, or @file.txt")
  flags.DEFINE_string("output", "zero_shot_out", "output folder (PNGs + detections.json)")
  flags.DEFINE_string("rpn", "", "frozen RPN (stage='rpn' workdir or export); '' = sliding windows")
  flags.DEFINE_string("text_checkpoint", "", "CLIP checkpoint for the text tower")
  flags.DEFINE_string("embeddings", "", ".npy [K, D] vocabulary embeddings")
  flags.DEFINE_string("source", "", "force the checkpoint format")
  flags.DEFINE_string("annotations", "", "COCO / LVIS-format json: evaluate instead of drawing")
  flags.DEFINE_enum(
      "boxes", "gt", ("gt", "rpn"), "with --annotations: classify GT boxes or proposals"
  )
  flags.DEFINE_string("split", "", "with --annotations: coco_ovd | lvis | '' (standard metrics)")
  flags.DEFINE_integer("test_size", 800, "shorter side")
  flags.DEFINE_integer("max_size", 1333, "longer side cap (also the padded size)")
  flags.DEFINE_float("score_thresh", 0.05, "drop detections below")
  flags.DEFINE_float("draw_threshold", 0.0, "draw only detections above")
  flags.DEFINE_float("nms_thresh", 0.5, "per-class NMS IoU")
  flags.DEFINE_integer("topk", 50, "detections per image")
  flags.DEFINE_string("rpn_fusion", "", "'' | raw_logit | sigmoid")
  flags.DEFINE_bool("soft_nms", False, "gaussian soft-NMS instead of NMS")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
