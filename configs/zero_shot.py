"""Zero-shot open-vocabulary inference without fine-tuning (docs/design.md, "Detector transfer").

    python -m regionclip_jax.main --config=configs/zero_shot.py:folder \
        --config.zero_shot.checkpoint=CKPT --config.zero_shot.images=DIR \
        --config.zero_shot.vocabulary="cat,dog"
    python -m regionclip_jax.main --config=configs/zero_shot.py:coco_gt   # GT boxes, COCO OVD 65

Presets: folder (default: your images, your words), coco_gt / coco_rpn (the paper's protocol on
COCO OVD: GT boxes or RPN proposals, AP50 novel/base/all), lvis_gt / lvis_rpn, custom (your own
COCO-format json: `zero_shot.base_classes` splits its classes into base / novel).
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
  z.soft_nms = False
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


PRESETS = {
    "folder": folder,
    "coco_gt": lambda: _protocol("coco_ovd", "gt"),
    "coco_rpn": lambda: _protocol("coco_ovd", "rpn"),
    "lvis_gt": lambda: _protocol("lvis", "gt"),
    "lvis_rpn": lambda: _protocol("lvis", "rpn"),
    "custom": custom,
}


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  return select_preset(arg, PRESETS, "folder", "configs/zero_shot.py")
