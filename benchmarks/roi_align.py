"""RoIAlign benchmark: separable (matmul) vs gather formulation, forward and forward+backward.

  python benchmarks/roi_align.py            # C4 + FPN shapes (heavy: minutes on 2 cores)
  python benchmarks/roi_align.py --quick    # tiny shapes, to check the script

Reports the median wall time of `--repeats` runs (after one warm-up/compile run) and the
temporary memory XLA allocates for the compiled executable (memory_analysis().temp_size_in_bytes).
Backward uses a random cotangent (not the gradient of a plain sum, which XLA can simplify).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.ops.poolers import multilevel_roi_align
from regionclip_jax.ops.roi_align import roi_align


def _boxes(rng, n_img, num, img_h, img_w, min_size=16, max_size=None):
  max_size = max_size or min(img_h, img_w)
  wh = np.exp(rng.uniform(np.log(min_size), np.log(max_size), size=(n_img, num, 2)))
  xy = rng.uniform(0, 1, size=(n_img, num, 2)) * (np.array([img_w, img_h]) - wh)
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def _time(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _temp_gib(fn, args):
  mem = fn.lower(*args).compile().memory_analysis()
  return mem.temp_size_in_bytes / 2**30 if mem is not None else float("nan")


def bench(name, pool, feats, boxes, out_shape, repeats, rows, methods=("separable", "gather")):
  rng = np.random.default_rng(0)
  cot = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
  for method in methods:
    fwd = jax.jit(lambda f, b, m=method: pool(f, b, m))

    def bwd_fn(f, b, c, m=method):  # returns the output too, so the forward is not dead code
      y, vjp = jax.vjp(lambda x: pool(x, b, m), f)
      return y, vjp(c)[0]

    bwd = jax.jit(bwd_fn)
    t_f = _time(fwd, (feats, boxes), repeats)
    m_f = _temp_gib(fwd, (feats, boxes))
    t_b = _time(bwd, (feats, boxes, cot), repeats)
    m_b = _temp_gib(bwd, (feats, boxes, cot))
    rows.append((name, method, t_f, m_f, t_b, m_b))
    print(
        f"{name:34s} {method:9s} fwd {t_f:7.3f} s {m_f:6.3f} GiB | fwd+bwd {t_b:7.3f} s {m_b:6.3f} GiB",
        flush=True,
    )


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--chunk", type=int, default=64)
  ap.add_argument("--skip-fpn", action="store_true")
  ap.add_argument("--skip-c4", action="store_true")
  ap.add_argument("--methods", default="separable,gather")
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  rows = []
  if args.quick:
    c4 = dict(n=1, h=10, w=12, c=16, r=40, s=7)
    fpn = dict(n=1, img=128, c=8, r=40, s=7)
  else:
    c4 = dict(n=1, h=50, w=84, c=1024, r=512, s=14)
    fpn = dict(n=1, img=800, c=256, r=512, s=7)

  # C4: res4 at stride 16, adaptive sampling, aligned (RegionCLIP's region path)
  feats = jnp.asarray(rng.normal(size=(c4["n"], c4["h"], c4["w"], c4["c"])), jnp.float32)
  boxes = jnp.asarray(_boxes(rng, c4["n"], c4["r"], c4["h"] * 16, c4["w"] * 16))
  s = c4["s"]
  pool = lambda f, b, m: roi_align(f, b, (s, s), 1 / 16, 0, True, chunk_size=args.chunk, method=m)
  if not args.skip_c4:
    bench(
        f"C4 {c4['n']}x{c4['h']}x{c4['w']}x{c4['c']} R={c4['r']} {s}x{s} sr=0",
        pool,
        feats,
        boxes,
        (c4["n"], c4["r"], s, s, c4["c"]),
        args.repeats,
        rows,
        args.methods.split(","),
    )

  if not args.skip_fpn:
    rng = np.random.default_rng(1)
    # FPN P2-P5 of an 800 x 1344 image; sampling_ratio 2 because the gather method's static
    # adaptive grid on P2 (ceil(200/7) x ceil(336/7) samples per bin) is prohibitive.
    img_h, img_w = fpn["img"], fpn["img"] * 336 // 200
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    feats = [
        jnp.asarray(
            rng.normal(size=(fpn["n"], img_h // int(1 / sc), img_w // int(1 / sc), fpn["c"])),
            jnp.float32,
        )
        for sc in scales
    ]
    boxes = jnp.asarray(_boxes(rng, fpn["n"], fpn["r"], img_h, img_w, 16, img_h))
    s = fpn["s"]
    pool = lambda f, b, m: multilevel_roi_align(
        f, b, (s, s), scales, 2, chunk_size=args.chunk, method=m
    )
    bench(
        f"FPN P2-P5 {img_h}x{img_w} C={fpn['c']} R={fpn['r']} {s}x{s} sr=2",
        pool,
        feats,
        boxes,
        (fpn["n"], fpn["r"], s, s, fpn["c"]),
        args.repeats,
        rows,
        args.methods.split(","),
    )
    # detectron2's FPN default (adaptive): only the separable form is exact (and affordable) here
    pool0 = lambda f, b, m: multilevel_roi_align(
        f, b, (s, s), scales, 0, chunk_size=args.chunk, method=m
    )
    bench(
        f"FPN P2-P5 {img_h}x{img_w} C={fpn['c']} R={fpn['r']} {s}x{s} sr=0",
        pool0,
        feats,
        boxes,
        (fpn["n"], fpn["r"], s, s, fpn["c"]),
        args.repeats,
        rows,
        ["separable"],
    )

  print("\n| shapes | method | fwd s | fwd temp GiB | fwd+bwd s | fwd+bwd temp GiB |")
  print("|---|---|---|---|---|---|")
  for name, method, t_f, m_f, t_b, m_b in rows:
    print(f"| {name} | {method} | {t_f:.3f} | {m_f:.3f} | {t_b:.3f} | {m_b:.3f} |")


if __name__ == "__main__":
  main()
