"""Our own checkpoint format: a directory with `config.json` (format, version, source, the
`CLIPConfig` as a dict) and `params.safetensors` (the Flax params, paths '/'-joined).

Written by `save_converted` (`tools/convert.py`, the pretraining job) and read back by
`read_converted` with numpy alone: no PyTorch, no pickle. Both files are written atomically
(`regionclip_jax.files`), `config.json`, the marker readers look for, last.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from regionclip_jax import files
from regionclip_jax.models.checkpoints.errors import CheckpointError
from regionclip_jax.models.checkpoints.safetensors_io import read_safetensors
from regionclip_jax.models.clip_model import CLIPConfig, param_shapes

CONVERTED_FORMAT = "regionclip_jax.clip"
CONVERTED_VERSION = 1
CONFIG_NAME = "config.json"
PARAMS_NAME = "params.safetensors"


def _flatten_params(tree, prefix="", leaf=np.asarray) -> dict[str, Any]:
  """Nested param dicts -> {'/'-joined path: leaf(value)} (the converted file's keys)."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flatten_params(v, key + "/", leaf))
    else:
      out[key] = leaf(v)
  return out


def _unflatten_params(flat: dict[str, np.ndarray]) -> dict:
  """Inverse of `_flatten_params`."""
  tree: dict = {}
  for key, v in flat.items():
    node = tree
    parts = key.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return tree


def save_converted(out_dir: str | os.PathLike, config, params, source: str = "unknown") -> str:
  """Write `config.json` + `params.safetensors` (flattened Flax paths, '/'-joined)."""
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  marker = os.path.join(out_dir, CONFIG_NAME)
  # an earlier conversion's config beside half-replaced params would read as a finished one
  if os.path.exists(marker):
    os.remove(marker)
  # np.array, not ascontiguousarray: the latter turns 0-d arrays (logit_scale) into shape (1,)
  flat = {k: np.array(v, order="C") for k, v in _flatten_params(params).items()}
  with files.atomic_path(os.path.join(out_dir, PARAMS_NAME)) as tmp:
    save_file(flat, tmp, metadata={"format": CONVERTED_FORMAT})
  meta = {
      "format": CONVERTED_FORMAT,
      "version": CONVERTED_VERSION,
      "source": source,
      "config": config.to_dict(),
  }
  files.write_json(marker, meta, indent=2)
  return out_dir


def read_converted(path: str | os.PathLike):
  """A converted directory -> (CLIPConfig, params tree of numpy arrays). No PyTorch needed."""
  path = os.fspath(path)
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  cfg_file = os.path.join(folder, CONFIG_NAME)
  try:
    with open(cfg_file, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:  # json and utf-8 decoding errors are ValueErrors
    raise CheckpointError(f"{cfg_file}: unreadable converted config ({e})") from None
  fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
  if fmt != CONVERTED_FORMAT or not isinstance(meta.get("config"), dict):
    raise CheckpointError(f"{cfg_file}: not a regionclip_jax converted checkpoint (format={fmt!r})")
  version = meta.get("version", 0)
  if not isinstance(version, int) or version > CONVERTED_VERSION:
    raise CheckpointError(
        f"{cfg_file}: version {version!r} is not one this regionclip_jax reads "
        f"(<= {CONVERTED_VERSION}; a newer release wrote it?)"
    )
  try:
    config = CLIPConfig.from_dict(meta["config"])
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{cfg_file}: {e}") from None
  flat = read_safetensors(os.path.join(folder, PARAMS_NAME))
  params = _unflatten_params(flat)
  _check_tree(params, param_shapes(config), os.path.join(folder, PARAMS_NAME))
  return config, params


def _check_tree(params, shapes, where: str):
  """Raise naming the first missing, unexpected or mis-shaped parameter of `params`."""
  got = {k: v.shape for k, v in _flatten_params(params).items()}
  want = {k: tuple(v.shape) for k, v in _flatten_params(shapes, leaf=lambda x: x).items()}
  missing = sorted(set(want) - set(got))
  if missing:
    raise CheckpointError(
        f"{where}: missing parameter {missing[0]} (shape {want[missing[0]]})"
        + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    )
  extra = sorted(set(got) - set(want))
  if extra:
    raise CheckpointError(f"{where}: unexpected parameter {extra[0]} (shape {got[extra[0]]})")
  for k in sorted(want):
    if tuple(got[k]) != want[k]:
      raise CheckpointError(
          f"{where}: parameter {k} has shape {tuple(got[k])}, the config " f"expects {want[k]}"
      )
