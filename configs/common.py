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
  # locked: unknown keys in --config.x.y=... overrides fail, naming the valid ones, so the
  # configs need no key checking of their own
  cfg.lock()
  return cfg
