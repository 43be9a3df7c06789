"""Detection ops with static shapes: RoIAlign, FPN pooling, box geometry, matching, sampling, NMS.

`regionclip_jax.ops.roi_align` is the function (the module of the same name stays importable as
`regionclip_jax.ops.roi_align` through `from regionclip_jax.ops.roi_align import ...`).
"""

from regionclip_jax.ops.boxes import Box2BoxTransform, box_area, clip_boxes, pairwise_iou
from regionclip_jax.ops.matcher import Matcher
from regionclip_jax.ops.nms import batched_nms, nms, soft_nms
from regionclip_jax.ops.poolers import ROIPooler, assign_boxes_to_levels, multilevel_roi_align
from regionclip_jax.ops.roi_align import roi_align
from regionclip_jax.ops.sampling import subsample_labels

__all__ = [
    "Box2BoxTransform",
    "box_area",
    "clip_boxes",
    "pairwise_iou",
    "Matcher",
    "batched_nms",
    "nms",
    "soft_nms",
    "ROIPooler",
    "assign_boxes_to_levels",
    "multilevel_roi_align",
    "roi_align",
    "subsample_labels",
]
