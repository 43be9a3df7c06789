"""NMS benchmark: 6,000 scored boxes -> top 1,000 at IoU 0.7, batch of 2, jit vs numpy reference.

  python benchmarks/nms.py [--repeats 5] [--quick]

The numpy reference is torchvision's CPU kernel logic (sort, sweep, vectorised suppression of
the rest), run image by image; both produce the same kept lists (checked here).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.ops.nms import nms


def numpy_nms(boxes, scores, thr, max_output):
  x1, y1, x2, y2 = boxes.T
  areas = (x2 - x1) * (y2 - y1)
  order = np.argsort(-scores, kind="stable")
  suppressed = np.zeros(len(scores), bool)
  keep = []
  for a, i in enumerate(order):
    if suppressed[i]:
      continue
    keep.append(int(i))
    if len(keep) == max_output:
      break
    rest = order[a + 1 :]
    w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
    h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
      suppressed[rest[inter / (areas[i] + areas[rest] - inter) > thr]] = True
  return keep


def proposals(rng, n, img_h=800, img_w=1333):
  """RPN-like: many boxes around a few dozen objects plus background clutter."""
  centers = rng.uniform([0, 0], [img_w, img_h], size=(40, 2))
  c = centers[rng.integers(0, 40, n)] + rng.normal(0, 20, size=(n, 2))
  wh = np.exp(rng.uniform(np.log(16), np.log(400), size=(n, 2)))
  b = np.concatenate([c - wh / 2, c + wh / 2], 1)
  b = np.clip(b, 0, [img_w, img_h, img_w, img_h]).astype(np.float32)
  return b, rng.uniform(size=n).astype(np.float32)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  n, k, thr = (600, 100, 0.7) if args.quick else (6000, 1000, 0.7)
  rng = np.random.default_rng(0)
  data = [proposals(rng, n) for _ in range(2)]
  boxes = jnp.asarray(np.stack([d[0] for d in data]))
  scores = jnp.asarray(np.stack([d[1] for d in data]))
  fn = jax.jit(jax.vmap(lambda b, s: nms(b, s, thr, k)))
  idx, ok = jax.block_until_ready(fn(boxes, scores))
  refs = [numpy_nms(b, s, thr, k) for b, s in data]
  for i in range(2):
    assert np.asarray(idx[i])[np.asarray(ok[i])].tolist() == refs[i], "kept sets differ"
  t_jax, t_np = [], []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(boxes, scores))
    t_jax.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for b, s in data:
      numpy_nms(b, s, thr, k)
    t_np.append(time.perf_counter() - t0)
  kept = [len(r) for r in refs]
  print("| input | kept per image | jax jit (vmap over 2) s | numpy reference s | jax / numpy |")
  print("|---|---|---|---|---|")
  tj, tn = statistics.median(t_jax), statistics.median(t_np)
  print(f"| 2 x {n} boxes, top {k}, IoU {thr} | {kept} | {tj:.4f} | {tn:.4f} | {tj / tn:.2f} |")


if __name__ == "__main__":
  main()
