"""Geometric per-record transforms (detectron2 semantics): resize to a shortest edge, horizontal
flip, large-scale jitter. Each keeps `image` uint8 [H, W, 3] and `boxes` float32 [K, 4]
(x1, y1, x2, y2 px) consistent; records decoded at a reduced size carry `orig_size`, from which
the output size is computed so that it does not depend on the decode.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np
from PIL import Image

from regionclip_jax.data.images import shortest_edge_size

_INTERP = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
}


def _interp(name: str) -> int:
  if name not in _INTERP:
    raise ValueError(f"unknown interpolation {name!r}; expected one of {sorted(_INTERP)}")
  return _INTERP[name]


def resize_image(
    image: np.ndarray,
    height: int,
    width: int,
    interpolation: str = "bilinear",
    backend: str = "pil",
) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [height, width, 3].

  backend "pil" is what detectron2's ResizeTransform (and so the official code) uses. "cv2" is
  ~10x faster on CPU (0.85 vs 8.7 ms for 640x480 -> 1067x800 bicubic) with other kernels:
  bicubic a=-0.75 vs PIL's -0.5, and no antialiasing when shrinking; so shrinks by 1.75x or
  more use INTER_AREA (closer to PIL's antialiased filters there; slower, 7-14 ms), smaller
  ones cv2's own kernel (as close as INTER_AREA, or closer, and 5x faster). Difference to PIL in
  uint8 levels, max / mean, measured on the scikit-image photos (astronaut, coffee, chelsea,
  rocket) resized to the input size and saved as JPEG quality 90:
    input -> output               bicubic       bilinear
    640x480 -> 1067x800          13 / 0.35      1 / 0.14
    640x480 -> 853x640           15 / 0.37      1 / 0.18
    1200x900 -> 1067x800         11 / 0.25     12 / 0.26
    1600x1200 -> 1067x800        12 / 0.29     18 / 0.31
    1600x1200 -> 853x640 (area)  13 / 0.31     20 / 0.30
    2400x1800 -> 1067x800 (area) 10 / 0.22     12 / 0.23
  (cv2's own kernel on those last two: bicubic 19 / 0.43 and 13 / 0.34, bilinear 27 / 0.49 and
  25 / 0.41). tests/test_data_images.py asserts these bounds.
  """
  if image.shape[:2] == (height, width):
    return image
  if backend == "cv2":
    import cv2  # optional dependency (opencv-python)

    code = {
        "bicubic": cv2.INTER_CUBIC,
        "bilinear": cv2.INTER_LINEAR,
        "nearest": cv2.INTER_NEAREST,
        "lanczos": cv2.INTER_LANCZOS4,
    }[interpolation]
    shrink = min(image.shape[0] / height, image.shape[1] / width)
    if shrink >= 1.75 and interpolation in ("bicubic", "bilinear"):
      code = cv2.INTER_AREA
    return cv2.resize(image, (width, height), interpolation=code)
  if backend != "pil":
    raise ValueError(f"unknown resize backend {backend!r}; expected 'pil' or 'cv2'")
  return np.asarray(Image.fromarray(image).resize((width, height), _interp(interpolation)))


def _full_size(record: dict) -> tuple[int, int]:
  """The image's size as stored in its file: `orig_size` when the source decoded it smaller."""
  if "orig_size" in record:
    return int(record["orig_size"][0]), int(record["orig_size"][1])
  return record["image"].shape[:2]


def _scale_boxes(record: dict, sy: float, sx: float) -> None:
  if "boxes" in record:
    record["boxes"] = np.asarray(record["boxes"], np.float32).reshape(-1, 4) * np.array(
        [sx, sy, sx, sy], np.float32
    )


class ResizeShortestEdge(grain.transforms.RandomMap):
  """Shorter side to a size drawn from `short_edge_lengths`, longer side capped at `max_size`.

  sample_style "choice": one of the listed sizes (official pretraining: 640..800 step 32);
  "range": an integer in [min, max]. A single size makes it deterministic (test time).
  Interpolation: "bicubic" for pretraining as the official code, "bilinear" for detection.
  """

  def __init__(
      self,
      short_edge_lengths: int | Sequence[int],
      max_size: int = 1333,
      sample_style: str = "choice",
      interpolation: str = "bilinear",
      backend: str = "pil",
  ):
    if isinstance(short_edge_lengths, int):
      short_edge_lengths = (short_edge_lengths,)
    self.short_edge_lengths = tuple(int(s) for s in short_edge_lengths)
    if not self.short_edge_lengths or min(self.short_edge_lengths) <= 0:
      raise ValueError(f"ResizeShortestEdge: bad short_edge_lengths {short_edge_lengths}")
    if sample_style not in ("choice", "range"):
      raise ValueError(
          f"ResizeShortestEdge: sample_style must be 'choice' or 'range', got {sample_style!r}"
      )
    if sample_style == "range" and len(self.short_edge_lengths) != 2:
      raise ValueError("ResizeShortestEdge: sample_style='range' needs (min, max)")
    self.max_size = int(max_size)
    self.sample_style = sample_style
    self.interpolation = interpolation
    self.backend = backend
    _interp(interpolation)

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    if self.sample_style == "range":
      short = int(rng.integers(self.short_edge_lengths[0], self.short_edge_lengths[1] + 1))
    else:
      short = self.short_edge_lengths[int(rng.integers(len(self.short_edge_lengths)))]
    record = dict(record)
    h, w = record["image"].shape[:2]
    # Output size from the full size, so a draft-decoded image ends exactly as a full decode.
    newh, neww = shortest_edge_size(*_full_size(record), short, self.max_size)
    record.pop("orig_size", None)
    record["image"] = resize_image(record["image"], newh, neww, self.interpolation, self.backend)
    _scale_boxes(record, newh / h, neww / w)
    return record


class RandomFlip(grain.transforms.RandomMap):
  """Horizontal flip of image and boxes with probability `prob` (x -> W - x)."""

  def __init__(self, prob: float = 0.5):
    self.prob = float(prob)

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    if rng.random() >= self.prob:
      return record
    return hflip(record)


def hflip(record: dict) -> dict:
  record = dict(record)
  w = record["image"].shape[1]
  record["image"] = np.ascontiguousarray(record["image"][:, ::-1])
  if "boxes" in record:
    b = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
    record["boxes"] = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
  return record


class LargeScaleJitter(grain.transforms.RandomMap):
  """Large-scale jitter (Ghiasi et al. 2021): resize the longer side to `output_size` x s,
  s ~ U[min_scale, max_scale], then a random `output_size` crop (padding comes later).

  Boxes are shifted and clipped to the crop; boxes left with no area are dropped, as in any
  crop (this is what the augmentation means, so it is not counted as a data issue).
  """

  def __init__(
      self,
      output_size: int,
      min_scale: float = 0.1,
      max_scale: float = 2.0,
      interpolation: str = "bilinear",
      backend: str = "pil",
  ):
    if not 0 < min_scale <= max_scale:
      raise ValueError(
          f"LargeScaleJitter: need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}"
      )
    self.output_size = int(output_size)
    self.min_scale, self.max_scale = float(min_scale), float(max_scale)
    self.interpolation, self.backend = interpolation, backend
    _interp(interpolation)

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    record = dict(record)
    h, w = record["image"].shape[:2]
    fh, fw = _full_size(record)  # draft-decoded images: the size a full decode would have
    record.pop("orig_size", None)
    scale = rng.uniform(self.min_scale, self.max_scale) * self.output_size / max(fh, fw)
    newh, neww = max(1, int(fh * scale + 0.5)), max(1, int(fw * scale + 0.5))
    image = resize_image(record["image"], newh, neww, self.interpolation, self.backend)
    y0 = int(rng.integers(0, max(newh - self.output_size, 0) + 1))
    x0 = int(rng.integers(0, max(neww - self.output_size, 0) + 1))
    record["image"] = image[y0 : y0 + self.output_size, x0 : x0 + self.output_size]
    if "boxes" in record:
      ch, cw = record["image"].shape[:2]
      b = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
      b = b * np.array([neww / w, newh / h, neww / w, newh / h], np.float32)
      b = b - np.array([x0, y0, x0, y0], np.float32)
      b = np.stack(
          [
              np.clip(b[:, 0], 0, cw),
              np.clip(b[:, 1], 0, ch),
              np.clip(b[:, 2], 0, cw),
              np.clip(b[:, 3], 0, ch),
          ],
          1,
      )
      keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
      record["boxes"] = b[keep]
      for key in ("labels", "colors"):
        if key in record:
          record[key] = np.asarray(record[key])[keep]
    return record
