"""Region features of a folder of images: the official tools/extract_region_features.py.

    python -m regionclip_jax.tools.extract_region_features --checkpoint=CKPT --images=DIR \
        --rpn=RPN --output=DIR [--embeddings=EMB.pth]

The defaults are the official extract_region_features.sh (RN50, the LVIS zero-shot config
CLIP_fast_rcnn_R_50_C4_zsinf.yaml with the LVIS offline RPN): test size 800 / max size 1333
(INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST), offline RPN NMS 0.9 (MODEL.CLIP.OFFLINE_RPN_NMS_THRESH)
keeping the RPN's own test top-k (1000 proposals for the official RPNs; the .sh's commented
variant sets OFFLINE_RPN_POST_NMS_TOPK_TEST 100). With text embeddings (MODEL.CLIP.
TEXT_EMB_PATH): score threshold 0.02 (ROI_HEADS.SCORE_THRESH_TEST), per-class NMS 0.5, 100
detections per image (TEST.DETECTIONS_PER_IMAGE), RPN score fusion (MULTIPLY_RPN_SCORE).
The tool's flags are the `extract` fields below (same names and defaults):
`python -m regionclip_jax.tools.extract_region_features --help`.
"""

from __future__ import annotations

import ml_collections as mlc

from configs.common import select_preset


def _base() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.task = "extract_region_features"  # -> regionclip_jax.tools.extract_region_features.run
  c.stage = "extract_region_features"
  c.seed = 0
  e = c.extract = mlc.ConfigDict()
  e.checkpoint = ""  # CLIP checkpoint (any format, e.g. regionclip_pretrained-cc_rn50.pth)
  e.source = ""  # force the checkpoint format; "" = detect it
  e.images = ""  # folder of images (the official INPUT_DIR); json file names are relative to it
  e.output = ""  # "" = <workdir>/region_features
  e.regions = "rpn"  # "rpn" (--rpn) | "gt" (--annotations' boxes) | "file" (--boxes json)
  e.rpn = ""  # converted official RPN, or a stage="rpn" workdir / export
  e.annotations = ""  # COCO json: its images (and with regions="gt" its boxes)
  e.boxes = ""  # json of boxes per image (regions="file")
  e.embeddings = ""  # [K, D] .npy / official .pth: keep the classified detections only
  e.vocabulary = ""  # "a,b,c" or "@file.txt": the same, embedded by the text tower
  e.text_checkpoint = ""  # text tower for --vocabulary, if not in `checkpoint`
  e.test_size = 800
  e.max_size = 1333
  e.num_regions = 0  # RPN proposals per image after NMS; 0 = the RPN's own test top-k
  e.rpn_nms_thresh = 0.9
  e.score_thresh = 0.02
  e.nms_thresh = 0.5
  e.detections_per_image = 100
  e.rpn_fusion = "raw_logit"  # "" | "raw_logit" (official) | "sigmoid"
  e.on_error = ""  # "skip" | "strict"; "" = skip for an image folder, strict for a json
  e.max_images = 0  # the first N entries of the folder (sorted) or json; 0 = all
  return c


PRESETS = {"official": _base}


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  return select_preset(arg, PRESETS, "official", "configs/extract_region_features.py")
