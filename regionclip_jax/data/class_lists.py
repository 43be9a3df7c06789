"""Class lists of COCO / LVIS-format datasets: the built-in open-vocabulary splits and the
user's own lists ("all", "a,b,c", "@file.txt"), resolved against a json's categories."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from regionclip_jax.data import categories as cats
from regionclip_jax.data.validation import read_names

SPLITS = (
    "all",
    "coco_ovd_base",
    "coco_ovd_novel",
    "coco_ovd_all",
    "lvis_base",
    "lvis_rare",
    "lvis_all",
)


def split_class_names(split: str, json_categories: Sequence[Mapping]) -> list[str]:
  """Class names of `split`, in the order labels index them."""
  if split == "all":
    return [c["name"] for c in json_categories]
  if split.startswith("coco_ovd_"):
    return list(
        {"base": cats.COCO_OVD_BASE, "novel": cats.COCO_OVD_NOVEL, "all": cats.COCO_OVD_ALL}[
            split[len("coco_ovd_") :]
        ]
    )
  if split.startswith("lvis_"):
    # The json's own frequency field when it has one (LVIS v1 does), else the shipped list.
    source = (
        json_categories
        if all("frequency" in c for c in json_categories)
        else cats.read_lvis_v1_categories()
    )
    names = cats.lvis_split_names(source)
    key = split[len("lvis_") :]
    if key == "all":
      return [c["name"] for c in sorted(source, key=lambda c: c["id"])]
    return names["base" if key == "base" else "novel"]
  raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


# `data.base_classes` / `data.test_classes` names of the built-in splits -> the prefix of their
# SPLITS entries (base part for training, "all" for the test vocabulary)
BUILTIN_CLASS_SPLITS = {"coco_ovd": "coco_ovd", "lvis": "lvis", "lvis_v1": "lvis"}


def resolve_class_list(
    spec: str, json_categories: Sequence[Mapping], path: str, key: str, part: str = "base"
) -> list[str]:
  """A class list as a config gives it -> class names, in the order labels will index them.

  spec: a built-in split name (BUILTIN_CLASS_SPLITS: its `part`, "base" or "all", matched by name
  as `split_class_names` does), "all" (every category of the json, json order), "a,b,c", or
  "@file.txt" (one name per line). Listed names must be categories of the json at `path` (exact
  names); `key` (e.g. "data.base_classes") names the setting in the one-line errors.
  """
  spec = (spec or "").strip()
  json_names = [c["name"] for c in json_categories]
  if not spec:
    raise ValueError(
        f"{__name__}: {key} is empty; give a split name ({', '.join(BUILTIN_CLASS_SPLITS)}), "
        "'all', 'a,b,c' or '@file.txt'"
    )
  if spec in BUILTIN_CLASS_SPLITS:
    names = split_class_names(f"{BUILTIN_CLASS_SPLITS[spec]}_{part}", json_categories)
    if not set(names) & set(json_names):
      raise ValueError(
          f"{__name__}: {key}={spec!r}: none of the split's {len(names)} classes is a category of "
          f"{path} (matched by name)"
      )
    return names
  if spec == "all":
    names = json_names
  elif spec.startswith("@"):
    if not os.path.isfile(spec[1:]):
      raise FileNotFoundError(f"{__name__}: {key}: class list file not found: {spec[1:]}")
    names = read_names(spec[1:], f"class list of {key}")
  else:
    names = [n.strip() for n in spec.split(",") if n.strip()]
  if not names:
    raise ValueError(f"{__name__}: {key}={spec!r} lists no class ({path})")
  seen: set[str] = set()
  for n in names:
    if n in seen:
      raise ValueError(f"{__name__}: {key}: class {n!r} is listed twice")
    seen.add(n)
  known = set(json_names)
  for n in names:
    if n not in known:
      shown = ", ".join(repr(x) for x in json_names[:20]) + (
          ", ..." if len(json_names) > 20 else ""
      )
      raise ValueError(
          f"{__name__}: {key}: class {n!r} is not a category of {path} (it has {shown})"
      )
  return names
