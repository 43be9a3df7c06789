"""Hugging Face transformers `CLIPModel` checkpoints: file layout, and names -> OpenAI names.

Layout: a directory with `config.json` + `model.safetensors` / `pytorch_model.bin`, sharded
(`*.index.json`) or not, or one of those files. Only the ViT image tower exists in HF's CLIPModel.

HF splits the fused attention input projection into q/k/v and stores projections as Linear
weights [D, W]; OpenAI fuses `in_proj_weight` [3W, W] and keeps `proj` / `text_projection` as
[W, D] matrices. Everything else is a rename.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from regionclip_jax.models.checkpoints.errors import CheckpointError
from regionclip_jax.models.checkpoints.torch_files import read_weights_file

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

_LAYER = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$")

_BLOCK_RENAMES = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}

_TOP_RENAMES = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: HF's spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}

_TRANSPOSED = {
    "text_projection.weight": "text_projection",
    "visual_projection.weight": "visual.proj",
}

# buffers HF may save that carry no weights
_IGNORED = re.compile(r"(^|\.)position_ids$")


def is_hf_clip(keys) -> bool:
  return any(k.startswith(("text_model.", "vision_model.")) for k in keys)


def hf_to_openai(sd: dict[str, np.ndarray], where: str = "checkpoint") -> dict[str, np.ndarray]:
  """HF CLIPModel numpy state dict -> OpenAI-named numpy state dict.

  Raises ValueError naming `where` and the key for a key this mapping does not know, or an
  incomplete q/k/v triple.
  """
  out: dict[str, np.ndarray] = {}
  qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
  for key, value in sd.items():
    if _IGNORED.search(key):
      continue
    if key in _TOP_RENAMES:
      out[_TOP_RENAMES[key]] = value
      continue
    if key in _TRANSPOSED:
      out[_TRANSPOSED[key]] = np.ascontiguousarray(np.asarray(value).T)
      continue
    m = _LAYER.match(key)
    if m is None:
      raise ValueError(
          f"{where}: unknown HF CLIP key {key!r} (only CLIPModel with a ViT "
          "image tower is supported)"
      )
    tower, idx, rest = m.groups()
    prefix = ("visual." if tower == "vision_model" else "") + f"transformer.resblocks.{idx}."
    qm = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
    if qm:
      qkv.setdefault((prefix, qm.group(2)), {})[qm.group(1)] = value
    elif rest in _BLOCK_RENAMES:
      out[prefix + _BLOCK_RENAMES[rest]] = value
    else:
      raise ValueError(f"{where}: unknown HF CLIP key {key!r}")
  for (prefix, kind), parts in qkv.items():
    missing = [p for p in "qkv" if p not in parts]
    if missing:
      raise ValueError(
          f"{where}: missing HF keys {prefix}self_attn.{missing[0]}_proj.{kind} "
          "(q, k and v projections must all be present)"
      )
    out[f"{prefix}attn.in_proj_{kind}"] = np.concatenate(
        [np.asarray(parts[p]) for p in "qkv"], axis=0
    )
  return out


def hints_from_hf_config(cfg: dict) -> dict:
  """Architecture facts that shapes cannot tell, from an HF `config.json` (CLIPConfig dict)."""
  text = cfg.get("text_config") or {}
  vision = cfg.get("vision_config") or {}
  hints = {}
  if "num_attention_heads" in text:
    hints["text_heads"] = int(text["num_attention_heads"])
  if "num_attention_heads" in vision:
    hints["vision_heads"] = int(vision["num_attention_heads"])
  acts = {text.get("hidden_act", "quick_gelu"), vision.get("hidden_act", "quick_gelu")}
  hints["activation"] = acts.pop() if len(acts) == 1 else sorted(acts)
  eps = {float(text.get("layer_norm_eps", 1e-5)), float(vision.get("layer_norm_eps", 1e-5))}
  hints["layer_norm_eps"] = eps.pop() if len(eps) == 1 else sorted(eps)
  return hints


def read_hf_files(path: str) -> tuple[dict, dict | None]:
  """(HF-named flat weights, `config.json` dict or None) of a directory (sharded or not) or of
  one weights file (its directory's `config.json` is used when present)."""
  cfg = None
  if os.path.isdir(path):
    cfg_file = os.path.join(path, "config.json")
    if os.path.exists(cfg_file):
      with open(cfg_file, encoding="utf-8") as f:
        cfg = json.load(f)
    for index in HF_INDEXES:  # sharded checkpoints
      if os.path.exists(os.path.join(path, index)):
        with open(os.path.join(path, index), encoding="utf-8") as f:
          shards = sorted(set(json.load(f)["weight_map"].values()))
        sd = {}
        for shard in shards:
          sd.update(read_weights_file(os.path.join(path, shard)))
        return sd, cfg
    for name in HF_WEIGHTS:
      if os.path.exists(os.path.join(path, name)):
        return read_weights_file(os.path.join(path, name)), cfg
    raise CheckpointError(f"{path}: no {' / '.join(HF_WEIGHTS)} in this HF directory")
  cfg_file = os.path.join(os.path.dirname(path), "config.json")
  if os.path.exists(cfg_file):
    with open(cfg_file, encoding="utf-8") as f:
      cfg = json.load(f)
  return read_weights_file(path), cfg
