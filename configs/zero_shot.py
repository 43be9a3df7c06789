"""Zero-shot open-vocabulary inference without fine-tuning (docs/design.md, "Detector transfer").

    python -m regionclip_jax.main --config=configs/zero_shot.py:folder \
        --config.zero_shot.checkpoint=CKPT --config.zero_shot.images=DIR \
        --config.zero_shot.vocabulary="cat,dog"
    python -m regionclip_jax.main --config=configs/zero_shot.py:coco_gt   # GT boxes, COCO OVD 65

Presets: folder (default: your images, your words), coco_gt / coco_rpn (the paper's protocol on
COCO OVD: GT boxes or RPN proposals, AP50 novel/base/all), lvis_gt / lvis_rpn, custom (your own
COCO-format json: `zero_shot.base_classes` splits its classes into base / novel).
official_* (README, "Using the official RegionCLIP checkpoints"): every test-time value of an
official script and its yaml (cited at each), for the released checkpoints and embeddings:
official_coco_gt / official_coco_rpn / official_lvis_gt / official_lvis_rpn
(test_zeroshot_inference.sh), official_coco_detector / official_lvis_detector (a converted
fine-tuned detector, test_transfer_learning.sh), official_folder (visualize_zeroshot_inference.sh).
The tool's flags are generated from the `zero_shot` fields below (one definition):
`python -m regionclip_jax.tools.zero_shot --help`.
"""

from __future__ import annotations

import ml_collections as mlc

from configs.common import select_preset


def _base() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.task = "zero_shot"  # main.py -> regionclip_jax.tools.zero_shot.run
  c.stage = "zero_shot"
  c.seed = 0
  z = c.zero_shot = mlc.ConfigDict()
  z.checkpoint = ""  # CLIP checkpoint (any format) or a detector export dir
  z.source = ""  # force the checkpoint format (see models.checkpoints); "" = detect it
  z.checkpoint_kind = ""  # "detector": `checkpoint` must be a detector export; "" = any
  z.text_checkpoint = ""  # text tower, if not in `checkpoint`
  z.embeddings = ""  # .npy [K, D] in vocabulary / category order
  z.rpn = ""  # frozen RPN workdir / export; "" = sliding windows
  z.images = ""
  z.vocabulary = ""  # "a,b,c" or "@file.txt"
  z.exemplars = ""  # json of classes given by example boxes (detection/exemplars.py)
  # bad images / records: "skip" (warn, count, go on) | "strict" (stop, one line naming it);
  # "" = skip for an images folder, strict with annotations
  z.on_error = ""
  z.output = ""  # "" = <workdir>/zero_shot
  z.annotations = ""  # COCO / LVIS json: evaluate instead of drawing
  z.boxes = "gt"  # "gt" | "rpn"
  z.split = ""
  # with annotations: the base classes (a split name, "all", "a,b,c" or "@file.txt", as the
  # finetune job's data.base_classes); novel = the rest of the vocabulary ("" = every category)
  z.base_classes = ""
  z.max_images = 0
  z.test_size = 800
  z.max_size = 1333
  z.score_thresh = 0.05
  z.draw_threshold = 0.0
  z.nms_thresh = 0.5
  z.topk = 50
  z.rpn_fusion = ""  # "" | "raw_logit" (official MULTIPLY_RPN_SCORE) | "sigmoid"
  # after NMS report the un-fused probability (official MODEL.CLIP.VIS, its visualisation config);
  # False: the fused score the ranking used, as the official evaluation reports it
  z.report_unfused = False
  z.soft_nms = False
  z.rpn_nms_thresh = 0.0  # the RPN's NMS IoU (official OFFLINE_RPN_NMS_THRESH); 0 = its own
  return c


def folder() -> mlc.ConfigDict:
  return _base()


def _protocol(split: str, boxes: str) -> mlc.ConfigDict:
  c = _base()
  z = c.zero_shot
  z.split, z.boxes = split, boxes
  z.score_thresh = 0.001 if split == "coco_ovd" else 0.0001
  z.topk = 100 if split == "coco_ovd" else 300
  z.rpn_fusion = "raw_logit" if boxes == "rpn" else ""  # official zero-shot RPN inference fuses
  return c


def custom() -> mlc.ConfigDict:
  """Your own COCO-format test json with no fine-tuning (README, "Your own COCO-format
  dataset"): set annotations, images, checkpoint, base_classes and rpn (the finetune job's
  <workdir>/rpn; "" = sliding windows); AP50 and AP novel / base / all."""
  c = _base()
  z = c.zero_shot
  z.boxes = "rpn"
  z.score_thresh = 0.001
  z.topk = 100
  z.base_classes = "all"
  return c


def _official(split: str, boxes: str) -> mlc.ConfigDict:
  """test_zeroshot_inference.sh: the pretrained checkpoint on GT boxes (CROP_REGION_TYPE GT,
  MULTIPLY_RPN_SCORE False) or RPN proposals (RPN, True; the script's RPN: rpn_lvis_866.pth).
  COCO: CLIP_fast_rcnn_R_50_C4_ovd_zsinf.yaml (base CLIP_fast_rcnn_R_50_C4_ovd.yaml), the 65
  classes of coco_65_cls_emb.pth; LVIS: CLIP_fast_rcnn_R_50_C4_zsinf.yaml (base
  CLIP_fast_rcnn_R_50_C4.yaml), the 1203 classes of lvis_1203_cls_emb.pth."""
  c = _base()
  z = c.zero_shot
  z.split, z.boxes = split, boxes
  z.vocabulary = split  # the split's classes in category-id order, the embedding files' rows
  z.test_size, z.max_size = 800, 1333  # INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST
  z.nms_thresh = 0.5  # zsinf yamls: ROI_HEADS.NMS_THRESH_TEST
  z.rpn_nms_thresh = 0.9  # zsinf yamls: MODEL.CLIP.OFFLINE_RPN_NMS_THRESH
  z.rpn_fusion = "raw_logit" if boxes == "rpn" else ""  # the script's MULTIPLY_RPN_SCORE
  z.soft_nms = False  # ROI_HEADS.SOFT_NMS_ENABLED default
  if split == "coco_ovd":
    z.score_thresh = 0.001  # CLIP_fast_rcnn_R_50_C4_ovd.yaml: SCORE_THRESH_TEST
    z.topk = 100  # TEST.DETECTIONS_PER_IMAGE default
  else:
    # the script's GT command sets SCORE_THRESH_TEST 0.0001; its RPN command keeps the yaml's
    z.score_thresh = 0.0001 if boxes == "gt" else 0.02
    z.topk = 300  # CLIP_fast_rcnn_R_50_C4.yaml: TEST.DETECTIONS_PER_IMAGE
  return c


def _official_detector(split: str) -> mlc.ConfigDict:
  """test_transfer_learning.sh: a converted fine-tuned detector (tools.convert) on the proposals
  of the offline RPN it was trained with (COCO rpn_coco_48.pth, LVIS rpn_lvis_866_lsj.pth), its
  box regressor applied (NO_BOX_DELTA False), soft-NMS (the script's SOFT_NMS_ENABLED True;
  gaussian, sigma 0.5, prune 0.001: ROI_HEADS defaults). COCO: CLIP_fast_rcnn_R_50_C4_ovd.yaml
  with OPENSET_TEST_TEXT_EMB_PATH coco_65_cls_emb.pth; LVIS: CLIP_fast_rcnn_R_50_C4.yaml with
  lvis_1203_cls_emb.pth."""
  c = _official(split, "rpn")
  z = c.zero_shot
  z.checkpoint_kind = "detector"  # a pretrained checkpoint here would run zero-shot instead
  z.soft_nms = True
  z.rpn_nms_thresh = 0.0  # no OFFLINE_RPN_NMS_THRESH: the RPN config's own NMS 0.7
  if split == "coco_ovd":
    z.rpn_fusion = ""  # MULTIPLY_RPN_SCORE default False
  else:
    z.score_thresh = 0.02  # CLIP_fast_rcnn_R_50_C4.yaml: SCORE_THRESH_TEST
    z.rpn_fusion = "raw_logit"  # CLIP_fast_rcnn_R_50_C4.yaml: MULTIPLY_RPN_SCORE True
  return c


def official_folder() -> mlc.ConfigDict:
  """visualize_zeroshot_inference.sh: the pretrained checkpoint on a folder of images, the 1203
  LVIS classes (lvis_1203_cls_emb*.pth), CLIP_fast_rcnn_R_50_C4_custom_img.yaml (base
  CLIP_fast_rcnn_R_50_C4.yaml): RPN proposals (offline NMS 0.9), per-class NMS 0.3, score
  threshold 0.02, 300 per image, RPN-score fusion for the ranking with the unfused score shown
  (MODEL.CLIP.VIS); figures draw the detections above 0.05 (visualize_json_results.py
  --conf-threshold)."""
  c = _official("lvis", "rpn")
  z = c.zero_shot
  z.split = ""
  z.nms_thresh = 0.3  # CLIP_fast_rcnn_R_50_C4_custom_img.yaml: NMS_THRESH_TEST
  z.score_thresh = 0.02  # CLIP_fast_rcnn_R_50_C4.yaml: SCORE_THRESH_TEST
  z.draw_threshold = 0.05
  z.report_unfused = True  # CLIP_fast_rcnn_R_50_C4_custom_img.yaml: MODEL.CLIP.VIS True
  return c


PRESETS = {
    "folder": folder,
    "coco_gt": lambda: _protocol("coco_ovd", "gt"),
    "coco_rpn": lambda: _protocol("coco_ovd", "rpn"),
    "lvis_gt": lambda: _protocol("lvis", "gt"),
    "lvis_rpn": lambda: _protocol("lvis", "rpn"),
    "custom": custom,
    "official_coco_gt": lambda: _official("coco_ovd", "gt"),
    "official_coco_rpn": lambda: _official("coco_ovd", "rpn"),
    "official_lvis_gt": lambda: _official("lvis", "gt"),
    "official_lvis_rpn": lambda: _official("lvis", "rpn"),
    "official_coco_detector": lambda: _official_detector("coco_ovd"),
    "official_lvis_detector": lambda: _official_detector("lvis"),
    "official_folder": official_folder,
}


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  return select_preset(arg, PRESETS, "folder", "configs/zero_shot.py")
