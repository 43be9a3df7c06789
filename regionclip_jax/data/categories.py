"""Category vocabularies: COCO 2017, the COCO open-vocabulary split, LVIS v1 frequency splits.

COCO ids are the dataset's own (1..90 with gaps); names are those of the 2017 annotation json.
The COCO OVD split is the one of OVR-CNN (Zareian et al., CVPR 2021), used by RegionCLIP:
48 base classes for training, 17 novel classes held out, 65 evaluated.
LVIS v1 has no fixed list here by default: its base/novel split comes from each category's
`frequency` field ('r' rare = novel; 'c' common + 'f' frequent = base, 866 classes); the helpers
read it from an annotation json's `categories`. A shipped copy of the 1203 LVIS v1 categories
(`category_lists/lvis_v1.tsv`, id / frequency / name) backs `split_names("lvis_v1")` when present.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Sequence

# (id, name) in id order; the missing ids (12, 26, 29, 30, 45, 66, 68, 69, 71, 83) are the
# 2014 paper's classes never annotated.
_COCO = (
    (1, "person"),
    (2, "bicycle"),
    (3, "car"),
    (4, "motorcycle"),
    (5, "airplane"),
    (6, "bus"),
    (7, "train"),
    (8, "truck"),
    (9, "boat"),
    (10, "traffic light"),
    (11, "fire hydrant"),
    (13, "stop sign"),
    (14, "parking meter"),
    (15, "bench"),
    (16, "bird"),
    (17, "cat"),
    (18, "dog"),
    (19, "horse"),
    (20, "sheep"),
    (21, "cow"),
    (22, "elephant"),
    (23, "bear"),
    (24, "zebra"),
    (25, "giraffe"),
    (27, "backpack"),
    (28, "umbrella"),
    (31, "handbag"),
    (32, "tie"),
    (33, "suitcase"),
    (34, "frisbee"),
    (35, "skis"),
    (36, "snowboard"),
    (37, "sports ball"),
    (38, "kite"),
    (39, "baseball bat"),
    (40, "baseball glove"),
    (41, "skateboard"),
    (42, "surfboard"),
    (43, "tennis racket"),
    (44, "bottle"),
    (46, "wine glass"),
    (47, "cup"),
    (48, "fork"),
    (49, "knife"),
    (50, "spoon"),
    (51, "bowl"),
    (52, "banana"),
    (53, "apple"),
    (54, "sandwich"),
    (55, "orange"),
    (56, "broccoli"),
    (57, "carrot"),
    (58, "hot dog"),
    (59, "pizza"),
    (60, "donut"),
    (61, "cake"),
    (62, "chair"),
    (63, "couch"),
    (64, "potted plant"),
    (65, "bed"),
    (67, "dining table"),
    (70, "toilet"),
    (72, "tv"),
    (73, "laptop"),
    (74, "mouse"),
    (75, "remote"),
    (76, "keyboard"),
    (77, "cell phone"),
    (78, "microwave"),
    (79, "oven"),
    (80, "toaster"),
    (81, "sink"),
    (82, "refrigerator"),
    (84, "book"),
    (85, "clock"),
    (86, "vase"),
    (87, "scissors"),
    (88, "teddy bear"),
    (89, "hair drier"),
    (90, "toothbrush"),
)

COCO_CATEGORIES: tuple[dict[str, Any], ...] = tuple({"id": i, "name": n} for i, n in _COCO)
COCO_IDS: tuple[int, ...] = tuple(i for i, _ in _COCO)
COCO_NAMES: tuple[str, ...] = tuple(n for _, n in _COCO)
COCO_ID_TO_NAME: dict[int, str] = dict(_COCO)
COCO_NAME_TO_ID: dict[str, int] = {n: i for i, n in _COCO}

# OVR-CNN split (names as in the COCO 2017 json).
_OVD_NOVEL = frozenset(
    {
        "airplane",
        "bus",
        "cat",
        "dog",
        "cow",
        "elephant",
        "umbrella",
        "tie",
        "snowboard",
        "skateboard",
        "cup",
        "knife",
        "cake",
        "couch",
        "keyboard",
        "sink",
        "scissors",
    }
)
_OVD_BASE = frozenset(
    {
        "person",
        "bicycle",
        "car",
        "motorcycle",
        "train",
        "truck",
        "boat",
        "bench",
        "bird",
        "horse",
        "sheep",
        "bear",
        "zebra",
        "giraffe",
        "backpack",
        "handbag",
        "suitcase",
        "frisbee",
        "skis",
        "kite",
        "surfboard",
        "bottle",
        "fork",
        "spoon",
        "bowl",
        "banana",
        "apple",
        "sandwich",
        "orange",
        "broccoli",
        "carrot",
        "pizza",
        "donut",
        "chair",
        "bed",
        "toilet",
        "tv",
        "laptop",
        "mouse",
        "remote",
        "microwave",
        "oven",
        "toaster",
        "refrigerator",
        "book",
        "clock",
        "vase",
        "toothbrush",
    }
)
# Kept in COCO id order so that contiguous class indices agree with the usual 65-class json.
COCO_OVD_BASE: tuple[str, ...] = tuple(n for n in COCO_NAMES if n in _OVD_BASE)
COCO_OVD_NOVEL: tuple[str, ...] = tuple(n for n in COCO_NAMES if n in _OVD_NOVEL)
COCO_OVD_ALL: tuple[str, ...] = tuple(n for n in COCO_NAMES if n in _OVD_BASE | _OVD_NOVEL)

LVIS_FREQUENCIES = ("r", "c", "f")
LVIS_V1_TSV = os.path.join(os.path.dirname(__file__), "category_lists", "lvis_v1.tsv")

SPLITS = ("coco", "coco_ovd", "lvis_v1")


def split_names(split: str) -> dict[str, list[str]]:
  """Class names of a named split: dict(base=[...], novel=[...]).

  "coco_ovd": 48 base / 17 novel (COCO id order). "coco": all 80 base, no novel.
  "lvis_v1": 'c' + 'f' base (866) / 'r' novel (337), from the shipped category list.
  """
  if split == "coco_ovd":
    return {"base": list(COCO_OVD_BASE), "novel": list(COCO_OVD_NOVEL)}
  if split == "coco":
    return {"base": list(COCO_NAMES), "novel": []}
  if split == "lvis_v1":
    return lvis_split_names(read_lvis_v1_categories())
  raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def read_categories(source: str | os.PathLike | Mapping | Sequence) -> list[dict[str, Any]]:
  """The `categories` list of a COCO/LVIS annotation json (path, loaded dict, or the list)."""
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"annotation file not found: {path}")
    try:
      with open(path) as f:
        source = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid json ({e})") from None
  if isinstance(source, Mapping):
    if "categories" not in source:
      raise ValueError("annotation json has no 'categories' key")
    source = source["categories"]
  cats = list(source)
  for c in cats:
    if not isinstance(c, Mapping) or "id" not in c or "name" not in c:
      raise ValueError(f"category entry needs 'id' and 'name': {c!r}")
  return cats


def lvis_split_ids(categories: Iterable[Mapping]) -> dict[str, list[int]]:
  """LVIS category ids grouped by frequency: dict(r, c, f, base=c+f, novel=r), sorted by id."""
  out: dict[str, list[int]] = {k: [] for k in LVIS_FREQUENCIES}
  for c in sorted(categories, key=lambda c: c["id"]):
    freq = c.get("frequency")
    if freq not in out:
      raise ValueError(
          f"LVIS category {c.get('id')} ({c.get('name')!r}) has frequency {freq!r}; "
          f"expected one of {LVIS_FREQUENCIES}"
      )
    out[freq].append(int(c["id"]))
  out["base"] = sorted(out["c"] + out["f"])
  out["novel"] = list(out["r"])
  return out


def lvis_split_names(categories: Iterable[Mapping]) -> dict[str, list[str]]:
  """As `lvis_split_ids` but names: dict(r, c, f, base, novel), id order."""
  cats = list(categories)
  id_to_name = {int(c["id"]): c["name"] for c in cats}
  return {k: [id_to_name[i] for i in v] for k, v in lvis_split_ids(cats).items()}


def read_lvis_v1_categories(path: str = LVIS_V1_TSV) -> list[dict[str, Any]]:
  """The shipped LVIS v1 list as category dicts {id, name, frequency} (1203 entries)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"LVIS v1 category list not found: {path}")
  cats = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line or line.startswith("#"):
        continue
      parts = line.split("\t")
      if len(parts) != 3:
        raise ValueError(f"{path}:{lineno}: expected 'id<TAB>frequency<TAB>name'")
      cats.append({"id": int(parts[0]), "frequency": parts[1], "name": parts[2]})
  return cats


def name_to_id(categories: Iterable[Mapping]) -> dict[str, int]:
  """name -> id of a categories list; a name given twice is an error (matching is by name)."""
  out: dict[str, int] = {}
  for c in categories:
    if c["name"] in out:
      raise ValueError(
          f"category name {c['name']!r} appears twice (ids {out[c['name']]}, {c['id']})"
      )
    out[c["name"]] = int(c["id"])
  return out
