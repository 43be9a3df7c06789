"""Any checkpoint -> an OpenAI-named numpy state dict (`read_state_dict`) -> `LoadedCLIP` (`load`).

Per format: detect (`detect.detect_source`), read the files and rename to OpenAI names (`hf`,
`open_clip`, `regionclip`, `openai`), drop non-weights (`_finalise`), infer the config and fit
what shapes cannot tell from the format's config file (`_apply_hints`), then convert to Flax
params (`convert_openai`). Converted directories skip all of that (`converted.read_converted`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from regionclip_jax.models import convert_openai
from regionclip_jax.models.checkpoints import hf, open_clip, openai, regionclip
from regionclip_jax.models.checkpoints.converted import read_converted
from regionclip_jax.models.checkpoints.detect import SOURCES, detect_source, unwrap
from regionclip_jax.models.checkpoints.errors import CheckpointError, one_line
from regionclip_jax.models.checkpoints.torch_files import read_weights_file
from regionclip_jax.models.loaded import LoadedCLIP

# Entries that are not weights: OpenAI's TorchScript extras, BN counters, masks, HF position ids.
_DROP_SUFFIXES = ("num_batches_tracked", "attn_mask", "position_ids")
_DROP_KEYS = {"input_resolution", "context_length", "vocab_size"}


def _finalise(sd: dict[str, Any]) -> dict[str, np.ndarray]:
  """Drop non-weight entries, float arrays to float32, logit_scale to a scalar."""
  out = {}
  for k, v in sd.items():
    if k in _DROP_KEYS or k.endswith(_DROP_SUFFIXES):
      continue
    v = np.asarray(v)
    if np.issubdtype(v.dtype, np.floating):
      v = v.astype(np.float32, copy=False)
    out[k] = v
  if "logit_scale" in out:
    if out["logit_scale"].size != 1:
      raise CheckpointError(
          f"key 'logit_scale' has shape {list(out['logit_scale'].shape)}, expected a scalar ([] or [1])"
      )
    out["logit_scale"] = out["logit_scale"].reshape(())
  return out


def _read(path: str, source: str | None, part: str, text_from) -> tuple[dict, str, dict]:
  """-> (finalised OpenAI-named state dict, source, architecture hints from config files)."""
  path = os.fspath(path)
  if source is None:
    source = detect_source(path)
  if source not in SOURCES:
    raise CheckpointError(f"{path}: unknown source {source!r}; expected one of {SOURCES}")
  if not os.path.exists(path):
    raise CheckpointError(f"checkpoint not found: {path}")
  hints: dict = {}
  if source == "converted":
    raise CheckpointError(
        f"{path}: a converted directory holds Flax params, not a state dict; "
        "use checkpoints.load (or read_converted)"
    )
  if source == "hf":
    raw, cfg = hf.read_hf_files(path)
    if cfg:
      hints = hf.hints_from_hf_config(cfg)
    try:
      sd = hf.hf_to_openai(unwrap(raw), where=path)
    except ValueError as e:
      raise CheckpointError(str(e)) from None
  elif source == "open_clip":
    weights, cfg_path = open_clip.open_clip_files(path)
    sd = open_clip.open_clip_to_openai(unwrap(read_weights_file(weights)), where=weights)
    if cfg_path:
      with open(cfg_path, encoding="utf-8") as f:
        hints = open_clip.open_clip_hints(json.load(f))
  elif source == "regionclip":
    raw = unwrap(read_weights_file(path))
    try:
      sd = regionclip.regionclip_to_openai(raw, part=part, where=path)
    except ValueError as e:
      raise CheckpointError(str(e)) from None
    if not regionclip.has_text_tower(raw):
      if text_from is None:
        raise CheckpointError(
            f"{path}: no text tower (lang_encoder.*), e.g. a fine-tuned detector; pass "
            "text_from=<a CLIP or RegionCLIP pretraining checkpoint> to take it from there"
        )
      text_sd, _ = read_state_dict(text_from)
      sd.update(
          {k: v for k, v in text_sd.items() if not k.startswith("visual.") and k != "logit_scale"}
      )
  else:  # openai
    sd = openai.check_openai(unwrap(read_weights_file(path)), where=path)
  return _finalise(sd), source, hints


def read_state_dict(
    path: str | os.PathLike,
    source: str | None = None,
    *,
    part: str = "student",
    text_from: str | os.PathLike | None = None,
) -> tuple[dict[str, np.ndarray], str]:
  """Any supported checkpoint -> (OpenAI-named numpy state dict, detected source).

  `part` (RegionCLIP only): "student" (`backbone.*`) or "teacher" (`teacher_backbone.*`).
  `text_from`: a second checkpoint supplying the text tower when `path` has none (a RegionCLIP
  fine-tuned detector).
  """
  sd, source, _ = _read(os.fspath(path), source, part, text_from)
  return sd, source


def architecture_of(sd: dict) -> str:
  """ "resnet" or "vit" from OpenAI-named keys."""
  if "visual.proj" in sd or "visual.class_embedding" in sd:
    return "vit"
  if any(k.startswith("visual.layer1.") for k in sd):
    return "resnet"
  raise CheckpointError(
      "state dict has no recognisable image tower (no visual.proj nor " "visual.layer1.*)"
  )


def _apply_hints(config, hints: dict, where: str):
  """Set what shapes cannot tell (heads); refuse what our CLIP cannot compute."""
  act = hints.get("activation", "quick_gelu")
  if act != "quick_gelu":
    raise CheckpointError(
        f"{where}: the model uses activation {act!r}; our CLIP implements "
        "QuickGELU only (OpenAI-style weights)"
    )
  eps = hints.get("layer_norm_eps", 1e-5)
  if not isinstance(eps, float) or abs(eps - 1e-5) > 1e-12:
    raise CheckpointError(f"{where}: layer_norm_eps {eps} is not supported (ours is 1e-5)")
  if "text_heads" in hints:
    config = dataclasses.replace(
        config, text=dataclasses.replace(config.text, heads=hints["text_heads"])
    )
  if "vision_heads" in hints and not config.is_resnet:
    config = dataclasses.replace(
        config, vision=dataclasses.replace(config.vision, heads=hints["vision_heads"])
    )
  return config


def load(
    path: str | os.PathLike,
    source: str | None = None,
    *,
    arch: str | None = None,
    config=None,
    part: str = "student",
    text_from=None,
    dtype=None,
):
  """Any supported checkpoint (or converted directory) -> `LoadedCLIP` (`models/loaded.py`).

  Args:
    source: one of SOURCES; detected when None.
    arch: "resnet" / "vit" to assert the image tower kind (clear error otherwise).
    config: a `CLIPConfig` to load into instead of the inferred one; a mismatch raises naming
      the parameter and both shapes.
    part, text_from: see `read_state_dict` (RegionCLIP).
    dtype: compute dtype of the returned model (float32 by default).
  """
  path = os.fspath(path)
  dtype = jnp.float32 if dtype is None else dtype
  if arch not in (None, "resnet", "vit"):
    raise CheckpointError(f"{path}: arch must be 'resnet' or 'vit', got {arch!r}")
  if (source or detect_source(path)) == "converted":
    cfg, params = read_converted(path)
    found = "resnet" if cfg.is_resnet else "vit"
    if arch and arch != found:
      raise CheckpointError(f"{path}: holds a {found} CLIP, but arch={arch!r} was requested")
    if config is not None and config != cfg:
      raise CheckpointError(f"{path}: converted config {cfg} differs from the requested {config}")
    return LoadedCLIP(cfg, params, dtype)

  sd, source, hints = _read(path, source, part, text_from)
  found = architecture_of(sd)
  if arch and arch != found:
    raise CheckpointError(
        f"{path}: holds a {found} CLIP ({source} checkpoint), but " f"arch={arch!r} was requested"
    )
  if config is None:
    try:
      config = convert_openai.config_from_state_dict(sd)
    except (KeyError, ValueError) as e:
      raise CheckpointError(f"{path}: cannot infer the CLIP architecture: {e}") from None
    config = _apply_hints(config, hints, path)
    if config.text.heads < 1 or (not config.is_resnet and config.vision.heads < 1):
      raise CheckpointError(
          f"{path}: cannot infer the number of attention heads (width < 64 "
          "and no config file such as config.json beside the weights)"
      )
  else:
    want = "resnet" if config.is_resnet else "vit"
    if want != found:
      raise CheckpointError(f"{path}: holds a {found} CLIP, but the given config is a {want}")
  try:
    params = convert_openai.params_from_state_dict(sd, config)
  except (KeyError, ValueError) as e:
    raise CheckpointError(f"{path}: {one_line(e)}") from None
  return LoadedCLIP(config, params, dtype)
