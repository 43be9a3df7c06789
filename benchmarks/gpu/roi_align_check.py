"""RoIAlign's 16-bit branch on the device against its float32 branch, at the pretraining shapes.

    python benchmarks/gpu/roi_align_check.py --out=/tmp/res           # RN50 res4: 12 x 50 x 50 x 1024
    python benchmarks/gpu/roi_align_check.py --out=/tmp/res --tiny    # CPU: both inputs take the f32 branch

bfloat16 features take `ops.roi_align`'s 16-bit branch on an accelerator (bf16 matmul operands,
float32 accumulation); the same features cast to float32 take the exact branch (Precision.HIGHEST).
Reports the relative error (||a - b|| / ||b||) and the largest error over the output's largest
magnitude, for the output and for the feature gradient of a random linear loss, and the forward +
backward time of each branch (median of interleaved calls).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from regionclip_jax.ops.roi_align import roi_align  # noqa: E402


def _errors(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b)), float(
      np.abs(a - b).max() / np.abs(b).max()
  )


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--tiny", action="store_true")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  # 4 images (not the step's 12): the errors need no more, and the host-side float64 error sums
  # over 12 images' outputs (243M values) alone took most of a 45 s cap on the device
  n, hw, c, r, img = (2, 8, 16, 9, 128) if a.tiny else (4, 50, 1024, 100, 800)
  rng = np.random.default_rng(0)
  wh = (0.15 + 0.65 * rng.uniform(size=(n, r, 2))) * img
  xy = rng.uniform(size=(n, r, 2)) * (img - wh)
  boxes = np.concatenate(
      [np.concatenate([xy, xy + wh], -1), np.tile([[[0, 0, img, img]]], (n, 1, 1))], 1
  )
  boxes = jnp.asarray(boxes, jnp.float32)  # [N, R + 1, 4]: random proposals + the global box
  feats = jnp.asarray(rng.normal(size=(n, hw, hw, c)), jnp.bfloat16)
  cot = jax.random.normal(jax.random.key(0), (n, r + 1, 14, 14, c), jnp.float32)

  def loss(x):
    out = roi_align(x, boxes, 14, 1 / 16, 0, True, chunk_size=256)
    return jnp.sum(out.astype(jnp.float32) * cot), out

  fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
  inputs = {"bf16 (16-bit branch)": feats, "float32 (exact branch)": feats.astype(jnp.float32)}
  res = {k: jax.block_until_ready(fn(x)) for k, x in inputs.items()}
  times = {k: [] for k in inputs}
  for _ in range(a.repeats):
    for k, x in inputs.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(x))
      times[k].append(time.perf_counter() - t)
  (_, o16), g16 = res["bf16 (16-bit branch)"]
  (_, o32), g32 = res["float32 (exact branch)"]
  out_err, grad_err = _errors(o16, o32), _errors(g16, g32)
  dev = jax.devices()[0]
  md = [
      f"## RoIAlign 16-bit branch vs float32 ({n} x {hw} x {hw} x {c}, {r} + 1 boxes, 14 x 14)",
      "",
      f"{dev.device_kind}, jax {jax.__version__}; forward + feature gradient, median of "
      f"{a.repeats} interleaved calls.",
      "",
      f"Output: relative error {out_err[0]:.2e}, max error / max |output| {out_err[1]:.2e}. "
      f"Gradient: relative error {grad_err[0]:.2e}, max error / max |grad| {grad_err[1]:.2e}.",
      "",
      "| features | fwd + bwd ms |",
      "|---|---|",
  ]
  md += [f"| {k} | {1e3 * statistics.median(v):.2f} |" for k, v in times.items()]
  with open(os.path.join(a.out, "roi_align_check.md"), "w") as f:
    f.write("\n".join(md) + "\n")
  with open(os.path.join(a.out, "roi_align_check.json"), "w") as f:
    json.dump(
        {"device": dev.device_kind, "out_err": out_err, "grad_err": grad_err, "times": times}, f
    )
  print("\n".join(md))


if __name__ == "__main__":
  main()
