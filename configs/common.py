"""Helpers shared by config files: preset selection and strict (typo-proof) configs."""

from __future__ import annotations

import difflib
from typing import Callable, Mapping

import ml_collections


def select_preset(
    arg: str | None,
    presets: Mapping[str, Callable[[], ml_collections.ConfigDict]],
    default: str,
    where: str,
) -> ml_collections.ConfigDict:
  """`--config=FILE:NAME` -> presets[NAME]() (NAME empty -> default); unknown names list the valid ones."""
  name = (arg or "").strip() or default
  if name not in presets:
    close = difflib.get_close_matches(name, list(presets), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"{where}: unknown preset {name!r}{hint}; valid presets: {sorted(presets)}")
  cfg = presets[name]()
  with cfg.unlocked():
    cfg.preset = name
  cfg.lock()  # unknown keys in --config.x.y=... overrides now fail, naming the valid ones
  return cfg


def check_keys(
    cfg: ml_collections.ConfigDict,
    reference: ml_collections.ConfigDict,
    where: str,
    prefix: str = "",
) -> None:
  """Raise naming the bad key and the valid keys if `cfg` has a key `reference` lacks."""
  for k in cfg.keys():
    if k not in reference:
      close = difflib.get_close_matches(k, list(reference.keys()), n=1)
      hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
      raise ValueError(
          f"{where}: unknown config key {prefix + k!r}{hint}; valid keys at this "
          f"level: {sorted(reference.keys())}"
      )
    if isinstance(cfg[k], ml_collections.ConfigDict) and isinstance(
        reference[k], ml_collections.ConfigDict
    ):
      check_keys(cfg[k], reference[k], where, prefix + k + ".")


def check_choice(value, choices, key: str, where: str) -> None:
  if value not in choices:
    raise ValueError(f"{where}: {key}={value!r} is not one of {list(choices)}")
