"""Evaluation: COCO / OVD split AP (pycocotools), LVIS AP (lvis), proposal recall, region top-1,
figures."""

from regionclip_jax.evaluation.coco_eval import evaluate_coco
from regionclip_jax.evaluation.detections_io import (
    detections_to_coco,
    ground_truth_to_coco,
    load_detections,
    write_json,
)
from regionclip_jax.evaluation.lvis_eval import evaluate_lvis
from regionclip_jax.evaluation.proposal_recall import proposal_recall
from regionclip_jax.evaluation.region_metrics import region_top1
