"""RegionCLIP (detectron2) `.pth` checkpoints: names -> OpenAI CLIP names.

Official layout (microsoft/RegionCLIP, `clip_backbone.py`, `clip_rcnn.py`), saved by
detectron2's checkpointer as `{"model": state_dict, ...}`:
- `backbone.*`: the student CLIP `ModifiedResNet` (conv1..3/bn1..3, layer1..4, attnpool) with
  OpenAI's own sub-names; its FrozenBatchNorm2d keeps weight/bias/running_mean/running_var.
  In a fine-tuned C4 detector (`CLIPFastRCNN`) it is the same module (RoI heads reuse
  `backbone.layer4` and `backbone.attnpool`).
- `teacher_backbone.*`: the frozen teacher ResNet (pretraining checkpoints only).
- `lang_encoder.*`: `CLIPLangEncoder` = OpenAI's text tower names (transformer.resblocks.*,
  token_embedding, positional_embedding, ln_final, text_projection), no logit_scale.
- anything else (`offline_backbone.*`, `offline_proposal_generator.*`, `roi_heads.*`,
  `image_projection`) belongs to the detector, not to CLIP, and is ignored here; a fine-tuned
  detector as a whole (its box predictor too) is read by `regionclip_detector.py`.
"""

from __future__ import annotations

import math

import numpy as np

PARTS = {"student": "backbone.", "teacher": "teacher_backbone."}
TEXT_PREFIX = "lang_encoder."
# RegionCLIP trains with a fixed temperature 0.01 and saves no logit scale; this reproduces it.
DEFAULT_LOGIT_SCALE = math.log(100.0)


def is_regionclip(keys) -> bool:
  return any(k.startswith(("backbone.", "teacher_backbone.", "lang_encoder.")) for k in keys)


def has_text_tower(keys) -> bool:
  return any(k.startswith(TEXT_PREFIX) for k in keys)


def regionclip_to_openai(
    sd: dict[str, np.ndarray], part: str = "student", where: str = "checkpoint"
) -> dict[str, np.ndarray]:
  """detectron2-named numpy state dict -> OpenAI-named one (image tower from `part`).

  The text tower is taken from `lang_encoder.*` when present; callers that need one and do not
  find it (a fine-tuned detector) must supply it from another checkpoint.
  """
  if part not in PARTS:
    raise ValueError(f"{where}: part must be one of {sorted(PARTS)}, got {part!r}")
  vis = PARTS[part]
  out: dict[str, np.ndarray] = {}
  for key, value in sd.items():
    if key.startswith(vis):
      out["visual." + key[len(vis) :]] = value
    elif key.startswith(TEXT_PREFIX):
      out[key[len(TEXT_PREFIX) :]] = value
  if not any(k.startswith("visual.") for k in out):
    present = sorted({k.split(".", 1)[0] + "." for k in sd})
    raise ValueError(
        f"{where}: no {vis}* keys for part={part!r} (top-level prefixes: "
        f"{', '.join(present[:8])})"
    )
  if "visual.attnpool.c_proj.weight" not in out and "visual.layer1.0.conv1.weight" in out:
    raise ValueError(
        f"{where}: {vis}attnpool.* is missing (a detector trained with mean "
        "pooling has no CLIP image head)"
    )
  if any(k.startswith("visual.") for k in out) and "logit_scale" not in out:
    out["logit_scale"] = np.asarray(DEFAULT_LOGIT_SCALE, np.float32)
  return out
