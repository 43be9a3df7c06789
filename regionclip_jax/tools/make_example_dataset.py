r"""A tiny COCO-format dataset of real photos, to try the own-dataset job without downloads.

  python -m regionclip_jax.tools.make_example_dataset --output=DIR [--size=160]

Writes DIR/train.json and DIR/test.json (COCO instances format: images, annotations with
[x, y, w, h] boxes, categories person / cat / rocket / cup), DIR/images/*.jpg (scikit-image's
astronaut, coffee, chelsea and rocket photos, with crops and mirror images for more scenes, the
longer side scaled to `--size` px) and DIR/clip/ (a randomly initialised tiny CLIP ResNet,
"tiny_rn", in the converted format `models.clip.load` reads). The boxes were placed by hand on
the full-size photos. Training with `data.base_classes="person,cat,rocket"` leaves "cup" novel:
it has boxes in both jsons, but training reads base-class boxes only (README, "Your own
COCO-format dataset"). A random CLIP detects nothing meaningful: the dataset is for trying the
commands, not for numbers.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from PIL import Image

from regionclip_jax import files
from regionclip_jax.detection.builders import numpy_init
from regionclip_jax.models.checkpoints import save_converted
from regionclip_jax.models.clip import CLIP, get_config

CATEGORIES = ({"id": 1, "name": "person"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "rocket"})
CATEGORIES += ({"id": 4, "name": "cup"},)
# Hand-placed boxes on the full-size scikit-image photos, x1 y1 x2 y2 px.
PHOTO_BOXES = {
    "astronaut": [("person", (20, 15, 365, 512)), ("rocket", (355, 0, 470, 280))],
    "coffee": [("cup", (170, 15, 415, 305))],
    "chelsea": [("cat", (0, 0, 451, 300))],
    "rocket": [("rocket", (300, 125, 340, 400))],
}
# (photo, crop x1 y1 x2 y2 in full-size px or None, mirrored): different views in each json
TRAIN_SCENES = (
    ("astronaut", None, False),
    ("astronaut", None, True),
    ("astronaut", (200, 0, 512, 400), False),
    ("chelsea", None, False),
    ("chelsea", None, True),
    ("chelsea", (50, 0, 400, 300), False),
    ("rocket", None, False),
    ("rocket", None, True),
    ("rocket", (160, 60, 480, 427), False),
    ("coffee", None, False),  # cup only: left out when cup is novel (no base box)
)
TEST_SCENES = (
    ("astronaut", (0, 0, 420, 512), False),
    ("chelsea", (0, 0, 350, 300), True),
    ("rocket", (200, 100, 440, 427), False),
    ("coffee", None, True),
    ("coffee", (100, 0, 500, 350), False),
)
# a box cut by a crop is kept when this much of it stays in view
MIN_VISIBLE = 0.3


def _scene(photo: np.ndarray, boxes, crop, mirrored: bool, size: int):
  """-> (image uint8 [h, w, 3] with its longer side `size`, [(name, x1 y1 x2 y2)] in its px)."""
  h, w = photo.shape[:2]
  x0, y0, x1, y1 = crop or (0, 0, w, h)
  image = photo[y0:y1, x0:x1]
  out = []
  for name, (a, b, c, d) in boxes:
    clipped = (max(a, x0) - x0, max(b, y0) - y0, min(c, x1) - x0, min(d, y1) - y0)
    area = max(0, clipped[2] - clipped[0]) * max(0, clipped[3] - clipped[1])
    if area >= MIN_VISIBLE * (c - a) * (d - b):
      out.append((name, clipped))
  cw = x1 - x0
  if mirrored:
    image = image[:, ::-1]
    out = [(n, (cw - c, b, cw - a, d)) for n, (a, b, c, d) in out]
  scale = size / max(image.shape[:2])
  new_w, new_h = round(image.shape[1] * scale), round(image.shape[0] * scale)
  image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h)))
  out = [
      (n, (a * scale, b * scale, min(c * scale, new_w), min(d * scale, new_h)))
      for n, (a, b, c, d) in out
  ]
  return image, out


def _write_split(directory: str, name: str, scenes, photos, size: int, first_id: int) -> str:
  """DIR/images/<name>_<i>.jpg and DIR/<name>.json -> the json's path."""
  cat_id = {c["name"]: c["id"] for c in CATEGORIES}
  images, anns = [], []
  for i, (photo, crop, mirrored) in enumerate(scenes):
    image, boxes = _scene(photos[photo], PHOTO_BOXES[photo], crop, mirrored, size)
    file_name = f"{name}_{i:02d}_{photo}.jpg"
    Image.fromarray(image).save(os.path.join(directory, "images", file_name), quality=92)
    image_id = first_id + i
    images.append(
        {"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]}
    )
    for label, (a, b, c, d) in boxes:
      anns.append(
          {
              "id": len(anns) + 1,
              "image_id": image_id,
              "category_id": cat_id[label],
              "bbox": [round(a, 2), round(b, 2), round(c - a, 2), round(d - b, 2)],
              "area": round((c - a) * (d - b), 2),
              "iscrowd": 0,
          }
      )
  path = os.path.join(directory, f"{name}.json")
  with files.atomic_open(path) as f:
    json.dump({"images": images, "annotations": anns, "categories": list(CATEGORIES)}, f, indent=1)
  return path


def write_tiny_clip(directory: str, seed: int = 0) -> str:
  """A randomly initialised "tiny_rn" CLIP (64-d joint space) in the converted format."""
  cfg = get_config("tiny_rn")
  shapes = jax.eval_shape(
      CLIP(cfg).init,
      jax.random.PRNGKey(seed),
      jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),  # tiny_rn: 64 px, attnpool grid 2x2
      jax.ShapeDtypeStruct((1, 77), jnp.int32),
  )
  params = numpy_init(shapes, seed=seed)["params"]
  return save_converted(directory, cfg, jax.tree.map(np.asarray, params), source="random tiny_rn")


def make_example_dataset(output: str, size: int = 160, clip: bool = True) -> dict[str, str]:
  """Writes the dataset (module docstring) under `output` -> its paths by config key."""
  import skimage.data

  os.makedirs(os.path.join(output, "images"), exist_ok=True)
  photos = {name: getattr(skimage.data, name)() for name in PHOTO_BOXES}
  paths = {
      "data.train_annotations": _write_split(output, "train", TRAIN_SCENES, photos, size, 1),
      "data.test_annotations": _write_split(output, "test", TEST_SCENES, photos, size, 101),
      "data.train_images": os.path.join(output, "images"),
      "data.test_images": os.path.join(output, "images"),
  }
  if clip:
    paths["model.init_checkpoint"] = write_tiny_clip(os.path.join(output, "clip"))
  return paths


def _define_flags() -> None:
  """The command line, defined only when run as a program: importing this module (tests, the
  API) must not claim absl flag names such as --output that other tools define too."""
  flags.DEFINE_string("output", None, "folder to write the dataset into")
  flags.DEFINE_integer("size", 160, "longer image side in px")


def main(argv: Sequence[str]) -> None:
  del argv
  output, size = flags.FLAGS.output, flags.FLAGS.size
  if not output:
    raise SystemExit(f"{__name__}: --output=DIR is required")
  for key, path in make_example_dataset(output, size).items():
    print(f"--config.{key}={path}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
