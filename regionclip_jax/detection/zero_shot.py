"""Zero-shot detection: the pretrained region model as a detector, with no fine-tuning.

RegionCLIP's zero-shot inference (docs/design.md, "Detector transfer"): a frozen RPN's proposals
(or given boxes) -> region embeddings of the pretrained model (RoIAlign on res4 -> layer4 ->
attnpool) -> cosine against every class's text embedding, zero background logit; boxes stay as
proposed (no box regressor was ever trained). `zero_shot_predictor` is that model, shared by the
shapes pipeline (`finetune.zero_shot_detection`) and `ZeroShotDetector`, the image-level API
behind `tools/zero_shot.py` (which also runs fine-tuned exports the same way).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from regionclip_jax.data.transforms import resize_image, shortest_edge_size
from regionclip_jax.detection import builders, export
from regionclip_jax.detection.heads import OpenVocabFasterRCNN
from regionclip_jax.detection.predictor import DetectorPredictor
from regionclip_jax.detection.settings import InferenceSettings, RPNSettings
from regionclip_jax.models.clip import CLIPConfig, normalize_images


def zero_shot_predictor(
    det: OpenVocabFasterRCNN,
    clip_params,
    inference: InferenceSettings,
    rpn: str = "",
    rpn_settings: RPNSettings = RPNSettings(),
    *,
    image_size: int = 64,
    seed: int = 0,
) -> DetectorPredictor:
  """The pretrained CLIP (`clip_params`, with a 'visual' subtree) as the detector `det`, scored
  by `inference` post-processing without box deltas or the score ensemble (the model is its own
  init). `rpn`: an RPN workdir / export for proposals ("" = callers pass boxes). `image_size` /
  `seed`: the random init of the non-backbone params (shape-only; `bbox_pred` goes unused)."""
  variables = builders.with_backbone(builders.init_detector(det, image_size, seed), clip_params)
  settings = dataclasses.replace(inference, apply_deltas=False, pretrained_score_weights=None)
  rpn_model, gen, rpn_vars = export.load_rpn(rpn) if rpn else (None, None, None)
  return DetectorPredictor(det, variables, settings, rpn_model, rpn_vars, gen, rpn_settings)


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
      report_unfused: bool = False,
      temperature: Optional[float] = None,
      pooler_resolution: Optional[int] = None,
  ):
    self.test_size, self.max_size = test_size, max_size
    self.pad = -(-max_size // 32) * 32
    self._text = None
    pretrained, weights, self.trained_names = None, None, frozenset()
    exported = export.is_export(checkpoint)
    if exported:
      det, variables, meta = export.load_export(checkpoint, "detector")
      # an export fine-tuned with the score ensemble carries its frozen init and weights
      pretrained = export.load_export_pretrained(checkpoint)
      if (pretrained is None) != (not meta.get("pretrained_score_weights")):
        raise ValueError(
            f"zero_shot: {checkpoint}: {export.EXPORT_META} pretrained_score_weights "
            f"= {meta.get('pretrained_score_weights')} but {export.EXPORT_PRETRAINED} is "
            f"{'missing' if pretrained is None else 'there'}; the score ensemble needs both"
        )
      if pretrained is not None:
        weights = tuple(meta["pretrained_score_weights"])
      self.trained_names = frozenset(meta.get("base_names", ()))
      # the temperature the detector was fine-tuned with, unless the caller overrides it
      temperature = meta.get("temperature") if temperature is None else temperature
      self.clip_config = CLIPConfig.from_dict(meta["clip_config"])
    else:
      self.clip_config, clip_params = builders.load_clip_params(checkpoint, source)
      v = self.clip_config.vision
      res = pooler_resolution or 2 * (v.image_size // 32)
      det = builders.build_detector(self.clip_config, freeze_at=0, pooler_resolution=res)
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
        report_unfused=report_unfused,
        temperature=temperature,
        max_candidates=2000,
        pretrained_score_weights=weights,
    )
    # a converted official RPN runs with its config's test top-k (FPN: 1000 per level)
    rpn_settings = export.rpn_test_settings(rpn) if rpn else RPNSettings()
    if exported:  # a fine-tuned detector: its box regressor applies, as in its own evaluation
      rpn_model, gen, rpn_vars = export.load_rpn(rpn) if rpn else (None, None, None)
      self.predictor = DetectorPredictor(
          det, variables, settings, rpn_model, rpn_vars, gen, rpn_settings, pretrained
      )
    else:
      self.predictor = zero_shot_predictor(det, clip_params, settings, rpn, rpn_settings)

  def text_embeddings(self, names: Sequence[str], embeddings: str = "") -> np.ndarray:
    """[K, D] for `names`: from `embeddings` (.npy or the official .pth, vocabulary order) or the
    text tower."""
    if embeddings:
      return builders.read_embeddings(embeddings, len(names), self.clip_config.embed_dim)
    if self._text is None or "transformer" not in self._text[1]:
      raise ValueError(
          "zero_shot: the checkpoint has no text tower; pass --text_checkpoint or --embeddings"
      )
    return builders.class_embeddings(names, *self._text)

  def preprocess(self, image: np.ndarray):
    """uint8 [H,W,3] -> (normalised padded [1,P,P,3], image_size [1,2], scale)."""
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
