"""Input pipeline throughput: records/s per core, ours vs the official kind, on COCO-like JPEGs.

Fixture: the scikit-image photos (astronaut, coffee, chelsea, rocket) resized and saved as JPEG
quality 90: `--coco` files at 640x480 / 480x640 (COCO's common sizes) plus `--big` at 1600x1200
(one mixed set, as COCO Captions), and `--large` at 2400x1800 (CC3M-like originals, where the
reduced-size JPEG decode applies), with COCO captions / instances json.

Variants, each side by side in one run (repeats interleaved, medians):
  reference   the official kind, one process as a DataLoader worker: PIL decode, PIL resize to
              shorter side 800 max 1333 (bicubic for pretraining, bilinear for detection, as
              detectron2's ResizeTransform), random flip, float32 CLIP normalisation and padding
              to 1344 on the host, caption tokenised; batched by np.stack.
  today       our pipeline with the settings used so far (PIL, float32 on the host, 1 thread).
  ours        our pipeline: draft JPEG decode, cv2 resize, uint8 batches (normalised on the
              device), in-process (1 read thread) or in `--workers` grain worker processes.
Records/s per core = records / CPU seconds of the main process and its workers (all threads),
so it does not depend on how many cores the (shared) machine gives the run; wall records/s is
shown too. Cores per H200 = images/s one H200 consumes / records/s per core: 155.6 for the bf16
RN50 pretraining step at 800 px, batch 12; 86 for detector inference (BENCHMARKS.md).

Usage: python benchmarks/input_pipeline.py [--repeats 3] [--records 192] [--sections ...]
"""

from __future__ import annotations

import argparse
import io
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
from regionclip_jax.data.coco import CocoCaptions, CocoDetection  # noqa: E402
from regionclip_jax.data.images import shortest_edge_size  # noqa: E402
from regionclip_jax.data.pipeline import CachedSource, make_pipeline  # noqa: E402
from regionclip_jax.data.shapes_world import ShapesWorld  # noqa: E402

H200_IMAGES_PER_S = {"pretrain": 155.6, "detection": 86.0}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SHORT, MAX_SIZE, PAD = 800, 1333, 1344


def _tokenizer():
  try:
    from regionclip_jax.models.tokenizer import tokenize

    tokenize(["warm up"])
    return tokenize, "BPE"
  except ImportError:  # stand-in with the tokenizer's output shape (0.1 ms a caption less)
    return (lambda texts, context_length=77: np.zeros((len(texts), context_length), np.int32)), (
        "zeros"
    )


def _fixture(root: str, coco: int, big: int, large: int) -> dict:
  """JPEG folders + COCO captions / instances json; returns {set name: (captions, instances, dir)}."""
  from skimage import data as skdata

  photos = [getattr(skdata, n)() for n in PHOTOS]
  sets = {
      "coco": [(640, 480) if i % 4 else (480, 640) for i in range(coco)] + [(1600, 1200)] * big,
      "large": [(2400, 1800)] * large,
  }
  out = {}
  for name, sizes in sets.items():
    if not sizes:
      continue
    d = os.path.join(root, name)
    os.makedirs(d)
    images, caps, anns = [], [], []
    for i, (w, h) in enumerate(sizes):
      img = Image.fromarray(photos[i % 4]).resize((w, h), Image.BICUBIC)
      img.save(os.path.join(d, f"{i}.jpg"), quality=90)
      images.append({"id": i, "file_name": f"{i}.jpg", "height": h, "width": w})
      caps += [
          {"id": 5 * i + j, "image_id": i, "caption": f"a photo of a {PHOTOS[i % 4]}, view {j}."}
          for j in range(5)
      ]
      anns += [
          {"id": 7 * i + j, "image_id": i, "category_id": 1, "bbox": [40 * j, 30, 90, 80]}
          for j in range(7)
      ]
    cap_path, inst_path = os.path.join(root, f"{name}_captions.json"), os.path.join(
        root, f"{name}_instances.json"
    )
    with open(cap_path, "w") as f:
      json.dump({"images": images, "annotations": caps}, f)
    with open(inst_path, "w") as f:
      json.dump({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}, f)
    out[name] = (cap_path, inst_path, d, len(sizes))
  return out


# -- the reference (official kind) ---------------------------------------------------------------


def _reference_batches(files, captions, task, batch_size, tokenize, seed=0):
  """detectron2 DatasetMapper-like loop, host float32: yields batches forever."""
  rng = np.random.default_rng(seed)
  mean = np.asarray(T.CLIP_MEAN, np.float32) * 255
  std = np.asarray(T.CLIP_STD, np.float32) * 255
  interp = Image.BICUBIC if task == "pretrain" else Image.BILINEAR
  while True:  # one batch of random files at a time
    images, masks, tokens = [], [], []
    for i in rng.integers(len(files), size=batch_size):
      with Image.open(files[i]) as im:
        arr = np.asarray(im.convert("RGB"))
      h, w = arr.shape[:2]
      nh, nw = shortest_edge_size(h, w, SHORT, MAX_SIZE)
      arr = np.asarray(Image.fromarray(arr).resize((nw, nh), interp))
      if task == "pretrain" and rng.random() < 0.5:
        arr = arr[:, ::-1]
      out = np.zeros((PAD, PAD, 3), np.float32)
      out[:nh, :nw] = (arr.astype(np.float32) - mean) / std
      mask = np.zeros((PAD, PAD), bool)
      mask[:nh, :nw] = True
      images.append(out)
      masks.append(mask)
      if task == "pretrain":
        caps = captions[i]
        tokens.append(tokenize([caps[int(rng.integers(len(caps)))]])[0])
    batch = {"image": np.stack(images), "image_mask": np.stack(masks)}
    if tokens:
      batch["caption_tokens"] = np.stack(tokens)
    yield batch


# -- measurement --------------------------------------------------------------------------------


def _cpu_seconds() -> float:
  """CPU time of this process (all threads) and of its live children (grain workers)."""
  import psutil

  me = psutil.Process()
  total = time.process_time()
  for child in me.children(recursive=True):
    try:
      t = child.cpu_times()
      total += t.user + t.system
    except psutil.NoSuchProcess:
      pass
  return total


WARMUP_BATCHES = 6


def _measure(make_iter, batches: int, batch_size: int) -> tuple[float, float]:
  """(wall records/s, records per CPU second) over `batches` batches after warm-up batches.

  The warm-up starts threads / workers and drains what they buffered while starting (up to ~4
  batches here), so that the timed window sees the steady state, not work done before it.
  """
  it = make_iter()
  try:
    for _ in range(WARMUP_BATCHES):
      next(it)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
      next(it)
    n = batches * batch_size
    return n / (time.perf_counter() - wall), n / (_cpu_seconds() - cpu)
  finally:
    if hasattr(it, "close"):
      it.close()


def _variants(fix, args, tokenize):
  """[(section, name, make_iter, batch_size)] in table order."""
  out = []
  bs = {"pretrain": 12, "detection": 8}
  for set_name, (cap_path, inst_path, image_dir, _) in fix.items():
    files = [os.path.join(image_dir, f"{i}.jpg") for i in range(fix[set_name][3])]
    with open(cap_path) as f:
      caps_json = json.load(f)
    captions = [[] for _ in files]
    for a in caps_json["annotations"]:
      captions[a["image_id"]].append(a["caption"])
    tasks = ("pretrain", "detection") if set_name == "coco" else ("pretrain",)
    for task in tasks:
      if task not in args.sections:
        continue
      section = f"{task} {SHORT}/{MAX_SIZE}, {set_name} set"
      b = bs[task]
      out.append(
          (
              section,
              "reference: PIL decode + PIL resize + float32 on host",
              lambda f=files, c=captions, t=task, b=b: _reference_batches(f, c, t, b, tokenize),
              b,
          )
      )

      def ours(backend, normalize, draft, workers, threads, t=task, b=b, paths=fix[set_name]):
        cap_path, inst_path, image_dir, _ = paths

        def make():
          if t == "pretrain":
            src = CocoCaptions(cap_path, image_dir, draft_for=(SHORT, MAX_SIZE) if draft else None)
            tf = T.pretrain_transforms(
                short_edge_lengths=(SHORT,),
                max_size=MAX_SIZE,
                tokenize_fn=tokenize,
                normalize=normalize,
                backend=backend,
            )
          else:
            src = CocoDetection(
                inst_path, image_dir, draft_for=(SHORT, MAX_SIZE) if draft else None
            )
            tf = T.detection_transforms(
                train=False,
                test_size=SHORT,
                max_size=MAX_SIZE,
                normalize=normalize,
                backend=backend,
            )
          return make_pipeline(
              src,
              tf,
              b,
              seed=0,
              shard_by_process=False,
              num_threads=threads,
              prefetch_buffer_size=2 * b,
              num_workers=workers,
          )

        return make

      out.append(
          (
              section,
              "today: PIL resize + float32 on host, 1 thread",
              ours("pil", True, False, 0, 1),
              b,
          )
      )
      if set_name == "large":
        out.append(
            (section, "ours without draft decode, 1 thread", ours("cv2", False, False, 0, 1), b)
        )
      out.append(
          (section, "ours: draft + cv2 + uint8, 1 thread", ours("cv2", False, True, 0, 1), b)
      )
      for w in args.workers:
        out.append(
            (
                section,
                f"ours: draft + cv2 + uint8, {w} worker process(es)",
                ours("cv2", False, True, w, 1),
                b,
            )
        )
  return out


def _shapes_rows(args) -> list[tuple[str, float, float]]:
  """The shapes-world pipeline (64 px scenes): generation, full pipeline at 1 / 2 threads, cache."""
  tok = lambda texts, context_length=77: np.zeros((len(texts), context_length), np.int32)
  world, n, bs = ShapesWorld(10**6, seed=0), args.scenes, 64
  tr = T.shapes_world_transforms(flip=True, tokenize_fn=tok)
  rows = []
  t = time.perf_counter()
  [world[i] for i in range(n)]
  rows.append(("shapes world 64px: generate only (1 thread)", n / (time.perf_counter() - t)))
  cached = CachedSource(ShapesWorld(n, seed=0))
  [cached[i] for i in range(n)]
  for name, src, threads in [
      ("pipeline, 1 read thread", world, 1),
      ("pipeline, 2 read threads", world, 2),
      ("pipeline over CachedSource (warm), 2 threads", cached, 2),
  ]:
    wall, per_cpu = _measure(
        lambda s=src, th=threads: make_pipeline(
            s, tr, bs, seed=0, shard_by_process=False, num_threads=th
        ),
        n // bs,
        bs,
    )
    rows.append((f"shapes world 64px: {name}, batch {bs}", wall, per_cpu))
  return rows


def _stage_rows(fix) -> list[tuple[str, float]]:
  """Per-stage cost (ms) on one 640x480 and one 2400x1800 file, 1 thread: what a record pays."""
  import cv2

  cv2.setNumThreads(1)
  rows = []
  sets = [("coco", 1), ("large", 0)] if "large" in fix else [("coco", 1)]
  for set_name, idx in sets:
    path = os.path.join(fix[set_name][2], f"{idx}.jpg")
    data = open(path, "rb").read()
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    h, w = full.shape[:2]
    nh, nw = shortest_edge_size(h, w, SHORT, MAX_SIZE)

    def draft():
      im = Image.open(io.BytesIO(data))
      im.draft("RGB", (nw, nh))
      return np.asarray(im.convert("RGB"))

    resized, small = T.resize_image(full, nh, nw, "bicubic", "cv2"), draft()
    kernel = "INTER_AREA" if min(h / nh, w / nw) >= 1.75 else "INTER_CUBIC"  # resize_image's rule
    stages = [
        ("PIL decode", lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))),
        (f"PIL draft decode (-> {small.shape[1]}x{small.shape[0]})", draft),
        ("PIL bicubic resize", lambda: T.resize_image(full, nh, nw, "bicubic", "pil")),
        (f"cv2 resize ({kernel})", lambda: T.resize_image(full, nh, nw, "bicubic", "cv2")),
        ("cv2 resize of the draft decode", lambda: T.resize_image(small, nh, nw, "bicubic", "cv2")),
        ("normalise + pad, float32", lambda: T.NormalizeAndPad(PAD).map({"image": resized})),
        ("pad, uint8", lambda: T.NormalizeAndPad(PAD, normalize=False).map({"image": resized})),
    ]
    for name, fn in stages:
      fn()
      reps, t = 10, time.perf_counter()
      for _ in range(reps):
        fn()
      rows.append((f"{w}x{h} -> {nw}x{nh}: {name}", (time.perf_counter() - t) / reps * 1e3))
  return rows


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--records", type=int, default=192, help="records timed per measurement")
  p.add_argument("--coco", type=int, default=200, help="640x480 / 480x640 files")
  p.add_argument("--big", type=int, default=40, help="1600x1200 files (in the coco set)")
  p.add_argument("--large", type=int, default=24, help="2400x1800 files (separate set)")
  p.add_argument("--workers", type=int, nargs="*", default=[1, 2])
  p.add_argument("--scenes", type=int, default=2048)
  p.add_argument("--sections", nargs="*", default=["pretrain", "detection", "stages", "shapes"])
  args = p.parse_args()
  print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} cores")
  tokenize, tok_name = _tokenizer()

  with tempfile.TemporaryDirectory() as root:
    fix = _fixture(root, args.coco, args.big, args.large)
    variants = _variants(fix, args, tokenize)
    results: dict[int, list] = {i: [] for i in range(len(variants))}
    for r in range(args.repeats):  # interleaved: every variant once per round
      for i, (_, _, make, b) in enumerate(variants):
        results[i].append(_measure(make, max(1, args.records // b), b))
      print(f"  round {r + 1}/{args.repeats} done, load {os.getloadavg()[0]:.2f}", flush=True)
    stages = _stage_rows(fix) if "stages" in args.sections else []

  print(
      f"\ncaptions tokenised with {tok_name}; {args.records} records a measurement, "
      f"median of {args.repeats} interleaved rounds"
  )
  width = max([len(v[1]) for v in variants] + [40])
  ref = {}
  last_section = None
  for i, (section, name, _, _) in enumerate(variants):
    wall = statistics.median(x[0] for x in results[i])
    per_core = statistics.median(x[1] for x in results[i])
    if section != last_section:
      task = section.split()[0]
      print(
          f"\n{section}  (H200 consumes {H200_IMAGES_PER_S[task]} images/s)\n"
          f"{'variant':<{width}}  {'rec/s wall':>10}  {'rec/s/core':>10}  {'x ref':>6}  "
          f"{'cores/H200':>10}"
      )
      last_section = section
      ref[section] = per_core
    cores = H200_IMAGES_PER_S[section.split()[0]] / per_core
    print(
        f"{name:<{width}}  {wall:10.1f}  {per_core:10.1f}  {per_core / ref[section]:6.2f}  "
        f"{cores:10.1f}"
    )
  if stages:
    print("\nper-stage cost, 1 thread")
    for name, ms in stages:
      print(f"  {name:<60}  {ms:7.2f} ms")
  if "shapes" in args.sections:
    print("\nshapes world (records/s)")
    for row in _shapes_rows(args):
      print(f"  {row[0]:<60}  " + "  ".join(f"{v:9.1f}" for v in row[1:]))
  print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
  main()
