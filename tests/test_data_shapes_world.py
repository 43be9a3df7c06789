"""Shapes world: determinism, record contract, boxes that hold what they claim, captions."""

import re

import numpy as np
import pytest

from regionclip_jax.data.shapes_world import (
    COLORS,
    DEFAULT_CONCEPTS,
    DEFAULT_NOVEL,
    SHAPES,
    ScenesWithout,
    ShapesWorld,
)


@pytest.fixture(scope="module")
def world():
  return ShapesWorld(400, seed=7)


@pytest.fixture(scope="module")
def scenes(world):
  return [world[i] for i in range(120)]


def test_deterministic_per_seed_and_index(world):
  again = ShapesWorld(400, seed=7)
  for i in (0, 5, 399):
    a, b = world[i], again[i]
    assert np.array_equal(a["image"], b["image"])
    assert np.array_equal(a["boxes"], b["boxes"]) and a["captions"] == b["captions"]
  other = ShapesWorld(400, seed=8)[5]
  assert not np.array_equal(other["image"], world[5]["image"])
  # Order of access does not matter (no hidden generator state).
  assert np.array_equal(world[3]["image"], ShapesWorld(400, seed=7)[3]["image"])


def test_record_contract(scenes, world):
  assert len(world) == 400
  for r in scenes:
    assert r["image"].shape == (64, 64, 3) and r["image"].dtype == np.uint8
    k = len(r["labels"])
    assert 2 <= k <= 4
    assert r["boxes"].shape == (k, 4) and r["boxes"].dtype == np.float32
    assert r["labels"].dtype == np.int32 and r["colors"].shape == (k,)
    b = r["boxes"]
    assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
    assert np.all(b >= 0) and np.all(b <= 64)
    assert np.all((r["labels"] >= 0) & (r["labels"] < len(DEFAULT_CONCEPTS)))
    assert isinstance(r["captions"], list) and len(r["captions"]) == 1
  with pytest.raises(IndexError, match="out of range"):
    world[400]


def test_boxes_hold_their_objects(scenes, world):
  """Inside each box, a good share of pixels has the object's colour; outside the union of the
  scene's boxes, no such share exists for colours absent from the scene (independent check)."""
  for r in scenes:
    img = r["image"].astype(np.float32)
    for box, color in zip(r["boxes"], r["colors"]):
      x1, y1, x2, y2 = box.astype(int)
      patch = img[y1:y2, x1:x2]
      ref = np.array(COLORS[world.color_names[color]], np.float32)
      close = np.linalg.norm(patch - ref, axis=-1) < 50
      assert close.mean() > 0.2, (r["image_id"], box, world.color_names[color])


def test_sizes_overlap_and_clutter(scenes):
  widths = np.concatenate(
      [
          np.maximum(r["boxes"][:, 2] - r["boxes"][:, 0], r["boxes"][:, 3] - r["boxes"][:, 1])
          for r in scenes
      ]
  )
  assert widths.min() >= 6 and widths.max() <= 48
  assert np.percentile(widths, 90) - np.percentile(widths, 10) > 10  # varied sizes
  # Some scenes have overlapping boxes (clutter), but never near-duplicates.
  overlaps = 0
  for r in scenes:
    b = r["boxes"]
    for i in range(len(b)):
      for j in range(i + 1, len(b)):
        iw = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
        ih = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
        if iw > 0 and ih > 0:
          overlaps += 1
          inter = iw * ih
          union = np.prod(b[i, 2:] - b[i, :2]) + np.prod(b[j, 2:] - b[j, :2]) - inter
          assert inter / union <= 0.3 + 1e-6
  assert overlaps > 10
  # Background is a noisy field, not flat.
  assert np.std(scenes[0]["image"].astype(np.float32)) > 20


def test_captions_name_some_objects_and_nothing_else(scenes, world):
  names = set(world.concepts)
  templates = set()
  incomplete = 0
  for r in scenes:
    cap = r["captions"][0]
    words = re.findall(r"[a-z]+", cap)
    mentioned = {w for w in words if w in names}
    present = {world.concepts[l] for l in r["labels"]}
    named = {world.concepts[l] for l in r["caption_labels"]}
    assert 1 <= len(r["caption_labels"]) <= 2
    assert mentioned == named and named <= present, (cap, present)
    incomplete += len(named) < len(present)
    templates.add(re.sub(r"|".join(sorted(names | set(COLORS), key=len, reverse=True)), "X", cap))
  assert incomplete > len(scenes) // 2  # captions are incomplete, as web captions are
  assert len(templates) >= 12
  assert any(c in r["captions"][0] for r in scenes for c in COLORS)


def test_vocabulary_split_and_coverage(world, scenes):
  assert len(world.concepts) == 12 and len(world.novel_indices) == 3
  assert set(world.base_indices) | set(world.novel_indices) == set(range(len(world.concepts)))
  assert not set(world.base_indices) & set(world.novel_indices)
  assert world.novel_names == [c for c in DEFAULT_CONCEPTS if c in DEFAULT_NOVEL]
  counts = np.bincount(np.concatenate([r["labels"] for r in scenes]), minlength=len(world.concepts))
  assert counts.min() > 0


def test_shapes_are_distinct():
  yy, xx = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij")
  masks = {n: f(xx, yy) for n, f in SHAPES.items()}
  for n, m in masks.items():
    assert 0.1 < m.mean() < 0.9, n
  names = list(masks)
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
      assert iou < 0.9, (a, b, iou)  # circle~hexagon is the closest pair (0.86)


def test_configurable():
  w = ShapesWorld(
      10,
      image_size=96,
      seed=1,
      concepts=("circle", "square", "star"),
      novel=("star",),
      min_objects=3,
      max_objects=3,
      num_captions=3,
      max_named=1,
  )
  r = w[4]
  assert r["image"].shape == (96, 96, 3) and len(r["labels"]) == 3 and len(r["captions"]) == 3
  assert w.novel_indices == (2,) and w.base_names == ["circle", "square"]
  with pytest.raises(ValueError, match="unknown concepts"):
    ShapesWorld(10, concepts=("circle", "blob"))
  with pytest.raises(ValueError, match="not in `concepts`"):
    ShapesWorld(10, concepts=("circle",), novel=("square",))


def test_scenes_without_novel_objects():
  """The detector stages' training scenes: novel-free, in world order, records unchanged."""
  world = ShapesWorld(200, seed=3)
  sub = ScenesWithout(world, 40, world.novel_names)
  assert len(sub) == 40 and sub.novel_names == world.novel_names
  novel = list(world.novel_indices)
  ids = [sub[i]["image_id"] for i in range(len(sub))]
  assert ids == sorted(ids) and len(set(ids)) == 40
  for i in range(len(sub)):
    assert not np.isin(sub[i]["labels"], novel).any()
  skipped = [j for j in range(ids[-1]) if j not in ids]
  assert skipped and all(np.isin(world[j]["labels"], novel).any() for j in skipped)
  np.testing.assert_array_equal(sub[7]["image"], world[ids[7]]["image"])
  with pytest.raises(ValueError, match="only"):
    ScenesWithout(ShapesWorld(20, seed=3), 40, world.novel_names)
  with pytest.raises(ValueError, match="hexagon"):
    ScenesWithout(world, 5, ["hexagon"])
