"""Static settings of the RPN, the RoI heads and inference (hashable; jit-static).

The one definition of their defaults: configs/finetune.py's rpn / roi_heads / test sections are
built from these fields, and `builders.settings_from` reads a section back by the same names.
"""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class RPNSettings:
  """detectron2 C4 RPN defaults."""

  iou_thresholds: tuple = (0.3, 0.7)
  batch_size_per_image: int = 256
  positive_fraction: float = 0.5
  pre_nms_topk_train: int = 12000
  post_nms_topk_train: int = 2000
  pre_nms_topk_test: int = 6000
  post_nms_topk_test: int = 1000
  nms_thresh: float = 0.7
  min_box_size: float = 0.0
  loss_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class RoIHeadSettings:
  """RegionCLIP COCO fine-tuning defaults (LVIS: focal_gamma None, bg_weight 0.8)."""

  batch_size_per_image: int = 512
  positive_fraction: float = 0.25
  iou_threshold: float = 0.5
  temperature: float = 0.01
  focal_gamma: Optional[float] = 0.5  # COCO; LVIS: None (plain CE)
  bg_weight: Optional[float] = 0.2  # COCO; LVIS: 0.8
  box_weights: tuple = (10.0, 10.0, 5.0, 5.0)
  box_loss_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
  """RegionCLIP COCO test defaults (LVIS: score_thresh 0.02, topk 300)."""

  score_thresh: float = 0.001
  nms_thresh: float = 0.5
  topk: int = 100
  soft_nms_enabled: bool = False  # the paper's reported numbers used gaussian soft-NMS (0.5)
  soft_nms_sigma: float = 0.5
  soft_nms_prune: float = 0.001
  max_candidates: int = 2000  # static-shape cap on (RoI, class) pairs entering NMS
  rpn_fusion: Optional[str] = None  # None | "raw_logit" (official MULTIPLY_RPN_SCORE) | "sigmoid"
  # report the un-fused probability after NMS (official MODEL.CLIP.VIS, visualisation configs);
  # False: the fused score, as the official evaluation reports it
  report_unfused: bool = False
  apply_deltas: bool = True
  temperature: float = 0.01
  # (w_seen, w_unseen): geometric-mean ensemble with the frozen pretrained model
  # (postprocess.ensemble_with_pretrained), F-VLM's (0.35, 0.65); None = the fine-tuned detector
  # alone (official RegionCLIP)
  pretrained_score_weights: Optional[tuple] = None
