"""OpenAI CLIP state dict (numpy, `model.py` names) <-> Flax params of `clip_model.CLIP`.

The Flax tree uses the OpenAI names with '.' -> '/', except where Flax needs its own leaf names:
  conv / linear `weight` [O, I, kh, kw] / [O, I]  ->  `kernel` [kh, kw, I, O] / [I, O]
  BatchNorm weight, bias, running_mean, running_var ->  scale, bias, mean, var (num_batches_tracked dropped)
  LayerNorm weight                                ->  scale
  `downsample.0` / `downsample.1`                 ->  `downsample_conv` / `downsample_bn`
  `attn.in_proj_weight` / `attn.in_proj_bias`     ->  `attn/in_proj/kernel` / `attn/in_proj/bias`
  `token_embedding.weight`                        ->  `token_embedding/embedding`
Raw parameters (`positional_embedding`, `class_embedding`, `proj`, `text_projection`,
`logit_scale`) are copied as they are (OpenAI uses them as `x @ p` already).
"""

from __future__ import annotations

import re

import numpy as np
from flax import traverse_util

from regionclip_jax.models.clip_model import (
    CLIPConfig,
    ResNetConfig,
    TextConfig,
    ViTConfig,
    param_shapes,
)

# Entries of OpenAI's TorchScript archives that are not parameters.
NON_PARAM_KEYS = frozenset({"input_resolution", "context_length", "vocab_size"})
_BN_RE = re.compile(r"^(bn\d+|downsample_bn)$")
_BN_TO_FLAX = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_BN_TO_TORCH = {v: k for k, v in _BN_TO_FLAX.items()}


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, "detach"):  # a torch tensor slipped through
    v = v.detach().cpu().float().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
  return np.asarray(v)


def openai_key_to_flax(key: str) -> tuple[tuple[str, ...], str] | None:
  """'visual.layer1.0.downsample.0.weight' -> (('visual', ..., 'downsample_conv', 'kernel'), 'weight').

  The second item says how to move the array: 'weight' (transpose conv / linear), 'copy'.
  Returns None for entries that are not parameters (num_batches_tracked, archive metadata).
  """
  if key in NON_PARAM_KEYS or key.endswith("num_batches_tracked"):
    return None
  parts = key.split(".")
  out: list[str] = []
  i = 0
  while i < len(parts):
    if parts[i] == "downsample" and i + 1 < len(parts) and parts[i + 1] in ("0", "1"):
      out.append("downsample_conv" if parts[i + 1] == "0" else "downsample_bn")
      i += 2
    else:
      out.append(parts[i])
      i += 1
  leaf, parent = out[-1], (out[-2] if len(out) > 1 else "")
  if leaf == "in_proj_weight":
    return tuple(out[:-1] + ["in_proj", "kernel"]), "weight"
  if leaf == "in_proj_bias":
    return tuple(out[:-1] + ["in_proj", "bias"]), "copy"
  if parent == "token_embedding" and leaf == "weight":
    return tuple(out[:-1] + ["embedding"]), "copy"
  if _BN_RE.match(parent) and leaf in _BN_TO_FLAX:
    return tuple(out[:-1] + [_BN_TO_FLAX[leaf]]), "copy"
  if parent.startswith("ln_") and leaf == "weight":
    return tuple(out[:-1] + ["scale"]), "copy"
  if leaf == "weight":
    return tuple(out[:-1] + ["kernel"]), "weight"
  return tuple(out), "copy"


def flax_path_to_openai(path: tuple[str, ...]) -> tuple[str, str]:
  """Inverse of `openai_key_to_flax`: -> (OpenAI key, 'weight' | 'copy')."""
  out: list[str] = []
  for p in path:
    if p == "downsample_conv":
      out += ["downsample", "0"]
    elif p == "downsample_bn":
      out += ["downsample", "1"]
    else:
      out.append(p)
  leaf, parent = path[-1], (path[-2] if len(path) > 1 else "")
  if parent == "in_proj":
    return ".".join(out[:-2] + ["in_proj_weight" if leaf == "kernel" else "in_proj_bias"]), (
        "weight" if leaf == "kernel" else "copy"
    )
  if parent == "token_embedding" and leaf == "embedding":
    return ".".join(out[:-1] + ["weight"]), "copy"
  if _BN_RE.match(parent) and leaf in _BN_TO_TORCH:
    return ".".join(out[:-1] + [_BN_TO_TORCH[leaf]]), "copy"
  if parent.startswith("ln_") and leaf == "scale":
    return ".".join(out[:-1] + ["weight"]), "copy"
  if leaf == "kernel":
    return ".".join(out[:-1] + ["weight"]), "weight"
  return ".".join(out), "copy"


def _torch_to_flax(a: np.ndarray, kind: str) -> np.ndarray:
  if kind == "weight":
    if a.ndim == 4:
      return np.transpose(a, (2, 3, 1, 0))
    if a.ndim == 2:
      return a.T
  return a


def _flax_to_torch(a: np.ndarray, kind: str) -> np.ndarray:
  if kind == "weight":
    if a.ndim == 4:
      return np.transpose(a, (3, 2, 0, 1))
    if a.ndim == 2:
      return a.T
  return a


def _torch_shape(shape, kind) -> tuple:
  return tuple(_flax_to_torch(np.empty(shape, np.bool_), kind).shape)


def _need(sd, key):
  if key not in sd:
    raise ValueError(
        f"config_from_state_dict: state dict lacks {key!r}; is it an OpenAI-named CLIP "
        f"state dict? (first keys: {sorted(sd)[:5]})"
    )
  return _shape(sd[key])


def _shape(v) -> tuple:
  # Accepts arrays, torch tensors, or shape-only stand-ins (jax.ShapeDtypeStruct).
  return tuple(v.shape) if hasattr(v, "shape") else np.shape(v)


def _count(sd, prefix: str, index: int) -> int:
  return len({k.split(".")[index] for k in sd if k.startswith(prefix)})


def _grid_side(sd, key: str) -> int:
  """Side g of the g x g grid of a positional embedding with g^2 + 1 rows (class / mean token)."""
  n_pos = _need(sd, key)[0]
  grid = round((n_pos - 1) ** 0.5)
  if grid < 1 or grid * grid + 1 != n_pos:
    raise ValueError(f"config_from_state_dict: {key!r} has {n_pos} rows, not a square grid + 1")
  return grid


def config_from_state_dict(sd) -> CLIPConfig:
  """Infer the CLIPConfig from OpenAI-named keys and shapes (heads by OpenAI's rule)."""
  embed_dim = _need(sd, "text_projection")[1]
  text_width = _need(sd, "ln_final.weight")[0]
  text = TextConfig(
      context_length=_need(sd, "positional_embedding")[0],
      vocab_size=_need(sd, "token_embedding.weight")[0],
      width=text_width,
      heads=text_width // 64,
      layers=_count(sd, "transformer.resblocks.", 2),
  )
  if "visual.proj" in sd:
    width, _, patch, _ = _need(sd, "visual.conv1.weight")
    grid = _grid_side(sd, "visual.positional_embedding")
    layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
    vision = ViTConfig(
        image_size=patch * grid, patch_size=patch, width=width, layers=layers, heads=width // 64
    )
  else:
    layers = tuple(_count(sd, f"visual.layer{b}.", 2) for b in (1, 2, 3, 4))
    width = _need(sd, "visual.layer1.0.conv1.weight")[0]
    grid = _grid_side(sd, "visual.attnpool.positional_embedding")
    vision = ResNetConfig(layers=layers, width=width, heads=width * 32 // 64, image_size=grid * 32)
  return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text)


def params_from_state_dict(sd, config: CLIPConfig | None = None, strict: bool = True):
  """OpenAI-named state dict (numpy / torch arrays) -> Flax params tree (float32).

  Errors list every missing key, every unexpected key (if `strict`) and every shape mismatch,
  naming the OpenAI key with both shapes.
  """
  config = config or config_from_state_dict(sd)
  expected = {p: s.shape for p, s in traverse_util.flatten_dict(param_shapes(config)).items()}
  flat, problems, seen = {}, [], set()
  for key, value in sd.items():
    mapped = openai_key_to_flax(key)
    if mapped is None:
      continue
    path, kind = mapped
    if path not in expected:
      if strict:
        problems.append(f"unexpected key {key!r} (shape {_shape(value)})")
      continue
    arr = _to_numpy(value)
    want = _torch_shape(expected[path], kind)
    if tuple(arr.shape) != want:
      problems.append(f"key {key!r} has shape {tuple(arr.shape)} but the config expects {want}")
      seen.add(path)
      continue
    flat[path] = _torch_to_flax(arr, kind).astype(np.float32)
    seen.add(path)
  for path, shape in expected.items():
    if path not in seen:
      key, kind = flax_path_to_openai(path)
      problems.append(f"missing key {key!r} (expected shape {_torch_shape(shape, kind)})")
  if problems:
    head = (
        f"params_from_state_dict: {len(problems)} problem(s) loading into {_describe(config)}:\n  "
    )
    raise ValueError(head + "\n  ".join(problems))
  return traverse_util.unflatten_dict(flat)


def state_dict_from_params(
    params, config: CLIPConfig | None = None, num_batches_tracked: bool = True
) -> dict[str, np.ndarray]:
  """Flax params -> OpenAI-named numpy state dict (float32), loadable by OpenAI's `model.py`.

  `num_batches_tracked`: add the int64 zero counters torch's BatchNorm keeps (OpenAI's files have them).
  """
  if "params" in params and "visual" not in params:
    params = params["params"]
  sd = {}
  for path, value in traverse_util.flatten_dict(params).items():
    key, kind = flax_path_to_openai(path)
    sd[key] = _flax_to_torch(np.asarray(value, np.float32), kind)
    if num_batches_tracked and key.endswith(".running_var"):
      sd[key[: -len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
  return sd


def _describe(config: CLIPConfig) -> str:
  v = config.vision
  if isinstance(v, ResNetConfig):
    return f"ResNet CLIP (layers {tuple(v.layers)}, width {v.width}, {v.image_size}px, embed {config.embed_dim})"
  return f"ViT CLIP (patch {v.patch_size}, width {v.width}, {v.layers} layers, embed {config.embed_dim})"
