"""Input pipeline throughput (records/s): shapes-world scenes and COCO-like JPEGs at 800 px.

Variants run side by side in one process, median of repeats:
  - shapes world 64 px: raw generation; full pipeline (normalise, pad, caption select, tokens) with
    1 / 2 / 4 read threads.
  - COCO-like: generated 640x480 JPEGs + instances json -> CocoDetection -> detection recipe
    (shorter side 800, max 1333, flip, pad 1344): PIL vs cv2 resize, bilinear vs bicubic, float32
    (normalised on host) vs uint8 output (normalised on device), 1 / 2 read threads; decode alone.
Usage: python benchmarks/input_pipeline.py [--repeats 3] [--scenes 2000] [--jpegs 48]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from regionclip_jax.data import transforms as T  # noqa: E402
from regionclip_jax.data.coco import CocoDetection  # noqa: E402
from regionclip_jax.data.images import decode_image  # noqa: E402
from regionclip_jax.data.pipeline import CachedSource, make_pipeline  # noqa: E402
from regionclip_jax.data.shapes_world import ShapesWorld  # noqa: E402


def _fake_tokenize(texts, context_length=77):
  # Stand-in with the tokenizer's output shape; the real BPE tokenizer is timed separately if present.
  return np.zeros((len(texts), context_length), np.int32)


def _median_rate(fn, n, repeats):
  rates = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    rates.append(n / (time.perf_counter() - t))
  return statistics.median(rates)


def _drain(make_it, batches):
  def run():
    it = make_it()
    for _ in range(batches):
      next(it)

  return run


def _coco_fixture(root, n):
  os.makedirs(os.path.join(root, "img"), exist_ok=True)
  rng = np.random.default_rng(0)
  images, anns = [], []
  base = np.asarray(
      Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).resize(
          (640, 480), Image.BICUBIC
      )
  )
  for i in range(n):
    img = np.clip(base.astype(np.int16) + rng.integers(-20, 20, (480, 640, 3)), 0, 255).astype(
        np.uint8
    )
    Image.fromarray(img).save(os.path.join(root, "img", f"{i}.jpg"), quality=90)
    images.append({"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640})
    for j in range(7):
      x, y = rng.uniform(0, 500), rng.uniform(0, 350)
      anns.append(
          {"id": len(anns), "image_id": i, "category_id": 1, "bbox": [x, y, 100, 100], "iscrowd": 0}
      )
  with open(os.path.join(root, "instances.json"), "w") as f:
    json.dump(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}, f
    )


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--scenes", type=int, default=2048)
  p.add_argument("--jpegs", type=int, default=48)
  args = p.parse_args()
  rows = []

  world = ShapesWorld(10**6, seed=0)
  n = args.scenes
  rows.append(
      (
          "shapes world 64px: generate only (1 thread)",
          _median_rate(lambda: [world[i] for i in range(n)], n, args.repeats),
      )
  )
  tr = T.shapes_world_transforms(flip=True, tokenize_fn=_fake_tokenize)
  bs = 64
  for threads in (1, 2, 4):
    rows.append(
        (
            f"shapes world 64px: pipeline, batch {bs}, {threads} read thread(s)",
            _median_rate(
                _drain(
                    lambda: make_pipeline(
                        world, tr, bs, seed=0, shard_by_process=False, num_threads=threads
                    ),
                    n // bs,
                ),
                n // bs * bs,
                args.repeats,
            ),
        )
    )
  cached = CachedSource(ShapesWorld(n, seed=0))
  [cached[i] for i in range(n)]  # first epoch fills the cache
  rows.append(
      (
          f"shapes world 64px: pipeline over CachedSource (warm), batch {bs}, 2 threads",
          _median_rate(
              _drain(
                  lambda: make_pipeline(
                      cached, tr, bs, seed=0, shard_by_process=False, num_threads=2
                  ),
                  n // bs,
              ),
              n // bs * bs,
              args.repeats,
          ),
      )
  )
  try:
    from regionclip_jax.models.tokenizer import tokenize

    caps = [world[i]["captions"][0] for i in range(512)]
    rows.append(
        (
            "shapes world captions: BPE tokenize, 512 one at a time",
            _median_rate(lambda: [tokenize([c]) for c in caps], 512, args.repeats),
        )
    )
  except ImportError as e:
    rows.append((f"BPE tokenizer not available ({e})", float("nan")))

  with tempfile.TemporaryDirectory() as root:
    _coco_fixture(root, args.jpegs)
    ds = CocoDetection(os.path.join(root, "instances.json"), os.path.join(root, "img"))
    m = args.jpegs
    rows.append(
        (
            "COCO-like 640x480 JPEG: decode only",
            _median_rate(
                lambda: [
                    decode_image(
                        os.path.join(root, "img", f"{i}.jpg"),
                        policy="strict",
                        counter=None,
                        where="",
                    )
                    for i in range(m)
                ],
                m,
                args.repeats,
            ),
        )
    )
    variants = [
        ("pil", "bilinear", True, 1),
        ("pil", "bilinear", True, 2),
        ("pil", "bicubic", True, 2),
        ("pil", "bilinear", False, 2),
        ("cv2", "bilinear", False, 1),
        ("cv2", "bilinear", False, 2),
        ("cv2", "bicubic", False, 2),
    ]
    for backend, interp, normalize, threads in variants:
      tr = T.detection_transforms(
          train=True,
          short_edge_lengths=(800,),
          interpolation=interp,
          normalize=normalize,
          backend=backend,
      )
      out = "float32" if normalize else "uint8"
      rows.append(
          (
              f"COCO-like -> 800px {backend} {interp}, pad 1344 {out}, batch 4, {threads} thread(s)",
              _median_rate(
                  _drain(
                      lambda: make_pipeline(
                          ds,
                          tr,
                          4,
                          seed=0,
                          shard_by_process=False,
                          num_threads=threads,
                          prefetch_buffer_size=8,
                      ),
                      m // 4,
                  ),
                  m // 4 * 4,
                  args.repeats,
              ),
          )
      )

  width = max(len(r[0]) for r in rows)
  print(f"{'variant':<{width}}  records/s")
  for name, rate in rows:
    print(f"{name:<{width}}  {rate:9.1f}")


if __name__ == "__main__":
  main()
