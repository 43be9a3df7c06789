"""open_clip checkpoints: file layout, model-config hints, and names -> OpenAI names.

Layout: `open_clip_model.safetensors` / `open_clip_pytorch_model.bin` (+ optional
`open_clip_config.json`), as open_clip's hub export writes them, or an open_clip training
checkpoint (`{"state_dict": ...}`, `module.` prefixes; unwrapped by `detect.unwrap`). open_clip
keeps OpenAI's names, except CustomTextCLIP, which moves the text tower under `text.`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from regionclip_jax.models.checkpoints.errors import CheckpointError

OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_CONFIG = "open_clip_config.json"


def looks_open_clip_custom(sd) -> bool:
  """Keys of a CustomTextCLIP: an image tower and a text tower under `text.`."""
  return any(k.startswith("text.") for k in sd) and any(k.startswith("visual.") for k in sd)


def open_clip_to_openai(sd: dict[str, Any], where: str) -> dict[str, Any]:
  """open_clip CLIP / CustomTextCLIP keys -> OpenAI keys (open_clip keeps OpenAI's names;
  CustomTextCLIP moves the text tower under `text.`)."""
  out = {}
  for k, v in sd.items():
    if k.startswith("text."):
      k = k[len("text.") :]
      if k == "text_projection.weight":  # a Linear projection: [D, W] -> [W, D]
        out["text_projection"] = np.ascontiguousarray(np.asarray(v).T)
        continue
      if k == "text_projection.bias":
        raise CheckpointError(
            f"{where}: open_clip text projection with a bias "
            "(text.text_projection.bias) is not supported"
        )
    if k == "logit_bias":
      continue  # SigLIP-style loss bias, not part of the encoders
    out[k] = v
  unsupported = [
      k
      for k in out
      if k.startswith(
          (
              "visual.trunk.",
              "transformer.embeddings.",
              "visual.attn_pool.",
              "text_decoder.",
              "text.",
          )
      )
      or ".ls_1." in k
      or ".ls_2." in k
  ]
  if unsupported:
    raise CheckpointError(
        f"{where}: open_clip architecture not supported by our CLIP "
        f"(key {unsupported[0]!r}: timm/HF towers, CoCa, LayerScale)"
    )
  return out


def open_clip_hints(cfg: dict) -> dict:
  """Facts that shapes do not tell, from open_clip's `open_clip_config.json` / model config."""
  model_cfg = cfg.get("model_cfg", cfg)
  vision = model_cfg.get("vision_cfg", {}) or {}
  text = model_cfg.get("text_cfg", {}) or {}
  hints = {"activation": "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"}
  if "heads" in text:
    hints["text_heads"] = int(text["heads"])
  if isinstance(vision.get("layers"), int) and "width" in vision:  # ViT tower
    hints["vision_heads"] = int(vision["width"]) // int(vision.get("head_width", 64))
  return hints


def open_clip_files(path: str) -> tuple[str, str | None]:
  """(weights file, `open_clip_config.json` or None) of a hub directory or of one file."""
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  weights = path
  if os.path.isdir(path):
    found = [
        os.path.join(path, n) for n in OPEN_CLIP_WEIGHTS if os.path.exists(os.path.join(path, n))
    ]
    if not found:
      raise CheckpointError(f"{path}: no {' / '.join(OPEN_CLIP_WEIGHTS)} in this directory")
    weights = found[0]  # safetensors first: no pickle at all
  cfg = os.path.join(folder, OPEN_CLIP_CONFIG)
  return weights, (cfg if os.path.exists(cfg) else None)
