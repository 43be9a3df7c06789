"""The "shapes world": procedural scenes of shape concepts with boxes and incomplete captions.

See docs/design.md, "Shapes world". Each scene is a noisy colour field with low-frequency tint,
some distractor clutter (strokes and specks that belong to no concept), and 2-3 objects of 16-40 px (at 64 px;
sizes scale with the image; see ShapesWorldConfig and HARD_WORLD) drawn from a vocabulary of
12 shape concepts (3 novel) in random colours,
rotations and aspect jitter, allowed to overlap a little. The caption names only 1-2 of the
objects (sometimes with their colour), as web captions do, so that region-level knowledge has to
be inferred. Everything is a pure function of (seed, index): `ShapesWorld(...)[i]` is the same
scene on every machine and every call.

Shapes are implicit masks (`shape_masks.SHAPES`) evaluated on the whole pixel grid with numpy, so
a 64 px scene takes well under a millisecond or two.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from regionclip_jax.data.shape_masks import FREE_ROTATION, SHAPES

# The default vocabulary: 12 mutually distinct shapes, a quarter held out as novel, each novel
# shape with base relatives (crescent~ring/circle, diamond~square, chevron~arrow/triangle), as
# novel COCO classes have seen cousins. The six subtler shapes of SHAPES (hexagon, pentagon,
# ellipse, semicircle, trapezoid, hourglass) are available through `concepts=`; with all 18 and
# the old clutter a tiny CLIP stayed at chance for 3,000 steps (docs/findings.md, "Teacher training in the shapes world").
DEFAULT_CONCEPTS: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "heart",
    "arrow",
    "crescent",
    "diamond",
    "frame",
    "chevron",
)
DEFAULT_NOVEL: tuple[str, ...] = ("crescent", "diamond", "chevron")

# Named colours (RGB 0-255). Colour words appear in captions as distractor attributes.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (240, 220, 30),
    "orange": (245, 135, 20),
    "purple": (135, 45, 190),
    "pink": (245, 120, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "cyan": (30, 210, 220),
    "brown": (130, 80, 35),
}

_TEMPLATES_ONE = (
    "a photo of a {a}.",
    "a {a}.",
    "there is a {a} in the picture.",
    "an image of a {a}.",
    "a {a} on a noisy background.",
    "look at this {a}.",
    "a picture showing a {a}.",
    "i can see a {a}.",
    "a drawing of a {a}.",
)
_TEMPLATES_TWO = (
    "a photo of a {a} and a {b}.",
    "a {a} next to a {b}.",
    "a {a} with a {b}.",
    "there is a {a} and a {b}.",
    "an image of a {a} near a {b}.",
    "a {a} and a {b}.",
    "a picture of a {a} beside a {b}.",
    "a drawing with a {a} and a {b}.",
)


@dataclasses.dataclass(frozen=True)
class ShapesWorldConfig:
  """Knobs of the generator (sizes in pixels at `image_size`; fractions scale with it)."""

  image_size: int = 64
  # Defaults sized so that a ~1M-parameter CLIP learns the shapes in minutes on 2 CPU cores;
  # the earlier, harder values (2-4 objects from 12 px, noise 14, 1-4 distractors, colour words
  # in half the phrases) are kept in HARD_WORLD for probes.
  min_objects: int = 2
  max_objects: int = 3
  min_object_frac: float = 16 / 64
  max_object_frac: float = 40 / 64
  max_box_iou: float = 0.3  # between any two objects' boxes: overlap allowed, not hiding
  min_named: int = 1
  max_named: int = 2
  color_word_prob: float = 0.2
  num_captions: int = 1
  num_distractors: tuple[int, int] = (0, 1)
  noise_std: float = 6.0  # per-pixel background noise, 0-255 scale
  max_rotation_deg: float = 20.0
  min_visible: float = 0.6  # fraction of an object's pixels left unoccluded by later ones


# The first version of the world (with all 18 SHAPES as concepts): ShapesWorld(n, **HARD_WORLD).
HARD_WORLD = dict(
    concepts=tuple(SHAPES),
    novel=("pentagon", "crescent", "trapezoid", "hourglass"),
    max_objects=4,
    min_object_frac=12 / 64,
    color_word_prob=0.5,
    num_distractors=(1, 4),
    noise_std=14.0,
)


class ShapesWorld:
  """Random-access source of shapes-world scenes (a grain `RandomAccessDataSource`).

  `ShapesWorld(n)[i]` -> dict(image uint8 [S, S, 3], boxes float32 [K, 4] x1y1x2y2 px,
  labels int32 [K] (index into `concepts`), colors int32 [K] (index into `color_names`),
  captions list[str], caption_labels int32 [M] (labels named in captions[0]), image_id int).
  K is in [min_objects, max_objects]; records vary in K, pad them with a transform.
  """

  def __init__(
      self,
      num_scenes: int,
      image_size: int = 64,
      seed: int = 0,
      concepts: Sequence[str] = DEFAULT_CONCEPTS,
      novel: Sequence[str] = DEFAULT_NOVEL,
      **kwargs,
  ):
    unknown = [c for c in concepts if c not in SHAPES]
    if unknown:
      raise ValueError(f"shapes_world: unknown concepts {unknown}; known: {sorted(SHAPES)}")
    bad_novel = [c for c in novel if c not in concepts]
    if bad_novel:
      raise ValueError(f"shapes_world: novel concepts {bad_novel} are not in `concepts`")
    if num_scenes < 0:
      raise ValueError(f"shapes_world: num_scenes must be >= 0, got {num_scenes}")
    self.config = ShapesWorldConfig(image_size=image_size, **kwargs)
    c = self.config
    if not 1 <= c.min_objects <= c.max_objects:
      raise ValueError(
          f"shapes_world: need 1 <= min_objects <= max_objects, got {c.min_objects}, {c.max_objects}"
      )
    if not 1 <= c.min_named <= c.max_named:
      raise ValueError(
          f"shapes_world: need 1 <= min_named <= max_named, got {c.min_named}, {c.max_named}"
      )
    if not 0 < c.min_object_frac <= c.max_object_frac <= 1:
      raise ValueError("shapes_world: need 0 < min_object_frac <= max_object_frac <= 1")
    self.num_scenes = int(num_scenes)
    self.seed = int(seed)
    self.concepts: tuple[str, ...] = tuple(concepts)
    self.color_names: tuple[str, ...] = tuple(COLORS)
    self._colors = np.array([COLORS[n] for n in self.color_names], np.float32)
    self.novel_indices: tuple[int, ...] = tuple(
        i for i, n in enumerate(self.concepts) if n in novel
    )
    self.base_indices: tuple[int, ...] = tuple(
        i for i, n in enumerate(self.concepts) if n not in novel
    )
    s = image_size
    # Pixel centres, shared by every scene.
    self._yy, self._xx = np.meshgrid(
        np.arange(s, dtype=np.float32) + 0.5, np.arange(s, dtype=np.float32) + 0.5, indexing="ij"
    )
    t = (np.arange(s, dtype=np.float32) + 0.5) / s * 2  # pixel centres in 3x3-grid units
    i0 = np.minimum(t.astype(int), 1)
    self._up = np.zeros((s, 3), np.float32)  # bilinear weights, [S, 3]
    self._up[np.arange(s), i0] = 1 - (t - i0)
    self._up[np.arange(s), i0 + 1] = t - i0

  @property
  def base_names(self) -> list[str]:
    return [self.concepts[i] for i in self.base_indices]

  @property
  def novel_names(self) -> list[str]:
    return [self.concepts[i] for i in self.novel_indices]

  def __len__(self) -> int:
    return self.num_scenes

  def __repr__(self) -> str:
    return (
        f"ShapesWorld(num_scenes={self.num_scenes}, image_size={self.config.image_size}, "
        f"seed={self.seed}, concepts={len(self.concepts)}, novel={len(self.novel_indices)})"
    )

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < self.num_scenes:
      raise IndexError(f"shapes_world: index {index} out of range [0, {self.num_scenes})")
    rng = np.random.default_rng([self.seed, index, 0x5EED])
    s = self.config.image_size
    image = self._background(rng)
    texture = rng.standard_normal((s, s, 1), np.float32) * 6.0
    owner = np.full((s, s), -1, np.int8)  # which object each pixel shows, for occlusion
    areas: list[int] = []
    labels, colors, boxes = [], [], []
    want = int(rng.integers(self.config.min_objects, self.config.max_objects + 1))
    for _ in range(want * 8):  # rejection sampling of placements; bounded tries
      if len(labels) == want:
        break
      obj = self._sample_object(rng, boxes)
      if obj is None:
        continue
      label, color, mask, box = obj
      # Every earlier object must stay mostly visible, or its box would label clutter.
      covered_owner = owner[mask]
      if any(
          np.count_nonzero(covered_owner == j) > (1 - self.config.min_visible) * areas[j]
          for j in range(len(areas))
      ):
        continue
      shade = (self._colors[color] + rng.normal(0, 10, 3)).astype(np.float32)
      image[mask] = shade + texture[mask]
      owner[mask] = len(labels)
      areas.append(int(mask.sum()))
      labels.append(label)
      colors.append(color)
      boxes.append(box)
    image = np.clip(image, 0, 255).astype(np.uint8)
    captions, named = self._captions(rng, labels, colors)
    return {
        "image": image,
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int32),
        "colors": np.asarray(colors, np.int32),
        "captions": captions,
        "caption_labels": np.asarray(named, np.int32),
        "image_id": index,
    }

  # -- pieces -------------------------------------------------------------------------------

  def _background(self, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency muted colour field + pixel noise + distractor strokes, float [S, S, 3]."""
    s = self.config.image_size
    grid = rng.uniform(60, 190, (3, 3, 3)).astype(np.float32)
    grey = grid.mean(-1, keepdims=True)
    grid = grey + 0.5 * (grid - grey)  # muted so that saturated objects stand out
    # Bilinear 3x3 -> s x s upsampling as two small matmuls (weights precomputed).
    field = np.einsum("ij,jkc,lk->ilc", self._up, grid, self._up, optimize=True)
    field += rng.standard_normal((s, s, 3), np.float32) * np.float32(self.config.noise_std)
    lo, hi = self.config.num_distractors
    mean_level = float(field.mean())
    for _ in range(int(rng.integers(lo, hi + 1))):
      colour = self._colors[rng.integers(len(self._colors))] * 0.6 + mean_level * 0.4
      if rng.random() < 0.5:  # a thin stroke
        p = rng.uniform(0, s, 2)
        ang = rng.uniform(0, np.pi)
        half = rng.uniform(0.15, 0.5) * s / 2
      else:  # a small speck, below the smallest object size
        p = rng.uniform(0, s, 2)
        ang, half = None, rng.uniform(0.02, 0.05) * s
      y0, y1 = max(0, int(p[1] - half) - 1), min(s, int(p[1] + half) + 2)
      x0, x1 = max(0, int(p[0] - half) - 1), min(s, int(p[0] + half) + 2)
      rel_x, rel_y = self._xx[y0:y1, x0:x1] - p[0], self._yy[y0:y1, x0:x1] - p[1]
      if ang is not None:
        along = rel_x * np.cos(ang) + rel_y * np.sin(ang)
        across = np.abs(-rel_x * np.sin(ang) + rel_y * np.cos(ang))
        mask = (np.abs(along) <= half) & (across <= max(0.6, s / 100))
      else:
        mask = rel_x**2 + rel_y**2 <= half * half
      field[y0:y1, x0:x1][mask] = colour
    return field

  def _sample_object(self, rng, boxes):
    c = self.config
    s = c.image_size
    label = int(rng.integers(len(self.concepts)))
    name = self.concepts[label]
    color = int(rng.integers(len(self.color_names)))
    size = rng.uniform(c.min_object_frac, c.max_object_frac) * s
    aspect = np.exp(rng.uniform(-0.2, 0.2))
    half_w, half_h = size / 2 * aspect, size / 2 / aspect
    if name in FREE_ROTATION:
      angle = rng.uniform(-np.pi, np.pi)
    else:
      angle = np.deg2rad(rng.uniform(-c.max_rotation_deg, c.max_rotation_deg))
    reach = max(half_w, half_h)
    cx, cy = rng.uniform(reach * 0.7, s - reach * 0.7, 2) if reach * 1.4 < s else (s / 2, s / 2)
    # Shapes live in [-1, 1]^2 local coordinates: evaluate only the window that can hold one.
    ext = np.hypot(half_w, half_h) + 1
    y0, y1 = max(0, int(cy - ext)), min(s, int(cy + ext) + 1)
    x0, x1 = max(0, int(cx - ext)), min(s, int(cx + ext) + 1)
    dx, dy = self._xx[y0:y1, x0:x1] - cx, self._yy[y0:y1, x0:x1] - cy
    ca, sa = np.cos(angle), np.sin(angle)
    u = (ca * dx + sa * dy) / half_w
    v = (-sa * dx + ca * dy) / half_h
    window = SHAPES[name](u, v)
    ys, xs = np.nonzero(window)
    if len(xs) < 9:
      return None
    mask = np.zeros((s, s), bool)
    mask[y0:y1, x0:x1] = window
    box = np.array([xs.min() + x0, ys.min() + y0, xs.max() + 1 + x0, ys.max() + 1 + y0], np.float32)
    bw, bh = box[2] - box[0], box[3] - box[1]
    if min(bw, bh) < 0.5 * c.min_object_frac * s:  # mostly outside the image
      return None
    for other in boxes:
      if _iou(box, other) > c.max_box_iou:
        return None
    return label, color, mask, box

  def _captions(self, rng, labels, colors):
    c = self.config
    captions, first_named = [], []
    for k in range(c.num_captions):
      n = int(rng.integers(c.min_named, c.max_named + 1))
      n = min(n, len(labels))
      chosen = rng.permutation(len(labels))[:n]
      phrases = []
      for j in chosen:
        phrase = self.concepts[labels[j]]
        if rng.random() < c.color_word_prob:
          phrase = f"{self.color_names[colors[j]]} {phrase}"
        phrases.append(phrase)
      if n == 0:
        text = "a picture of some shapes."
      elif n == 1:
        text = _TEMPLATES_ONE[rng.integers(len(_TEMPLATES_ONE))].format(a=phrases[0])
      else:
        text = _TEMPLATES_TWO[rng.integers(len(_TEMPLATES_TWO))].format(a=phrases[0], b=phrases[1])
      captions.append(_fix_articles(text))
      if k == 0:
        first_named = [labels[j] for j in chosen]
    return captions, first_named


class ScenesWithout:
  """The first `num_scenes` scenes of `world`, in index order, that show none of the concepts
  `exclude` (a random-access source, records as `ShapesWorld`'s; `image_id` stays the world index).

  The zero-shot detection protocol (Bansal et al., ECCV 2018, where the COCO 48 / 17 split comes
  from) removes the training images that show an unseen class: otherwise the class-agnostic RPN
  and the box classifier are taught that every novel object is background. In the shapes world
  that lesson is learnt perfectly (a crescent looks like nothing else), so the detector stages
  train on such novel-free scenes. The records are kept from the scan (~12 KiB each at 64 px).
  """

  def __init__(self, world: "ShapesWorld", num_scenes: int, exclude: Sequence[str]):
    unknown = [c for c in exclude if c not in world.concepts]
    if unknown:
      raise ValueError(f"shapes_world: cannot exclude {unknown}: not among the world's concepts")
    ids = [world.concepts.index(c) for c in exclude]
    self.world = world
    self.records: list[dict] = []
    for i in range(len(world)):
      if len(self.records) == num_scenes:
        break
      rec = world[i]
      if not np.isin(rec["labels"], ids).any():
        self.records.append(rec)
    if len(self.records) < num_scenes:
      raise ValueError(
          f"shapes_world: only {len(self.records)} of {len(world)} scenes are free of "
          f"{list(exclude)}; asked for {num_scenes}"
      )

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    return self.records[int(index)]

  def __getattr__(self, name):  # concepts, base_names, novel_names... of the world
    if name in ("world", "records"):
      raise AttributeError(name)
    return getattr(self.world, name)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  iw = min(a[2], b[2]) - max(a[0], b[0])
  ih = min(a[3], b[3]) - max(a[1], b[1])
  if iw <= 0 or ih <= 0:
    return 0.0
  inter = iw * ih
  return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _fix_articles(text: str) -> str:
  words = text.split(" ")
  for i, w in enumerate(words[:-1]):
    if w in ("a", "an"):
      words[i] = "an" if words[i + 1][0] in "aeiou" else "a"
  return " ".join(words)
