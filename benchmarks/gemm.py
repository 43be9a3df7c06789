"""float32 matmuls of the CLIP towers' shapes: XLA CPU against PyTorch and numpy, side by side.

  python benchmarks/gemm.py --repeats 7

XLA is timed twice from one lowering: as compiled by default (this XLA hands dots to its
YNNPACK fusion) and with that fusion switched off for the one program
(`compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""}`: XLA's own Eigen dot), so both
run in one process, interleaved with torch (`torch.matmul`) and numpy (its BLAS). Shapes: RN50's
text tower on 32 captions of 77 tokens ([2464, 512] into the in_proj / out_proj / c_fc / c_proj
kernels) and RN50's layer4 1x1 convolutions as matmuls at batch 8 (392 rows: 7 x 7 x 8). Each
cell: median ms, GFLOP/s, and the time over torch's; the last row sums all six shapes.
"""

from __future__ import annotations

import argparse
import collections

import jax
import numpy as np

from interleaved import interleaved_medians

NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}
SHAPES = (  # (what, (M, K, N))
    ("text in_proj", (2464, 512, 1536)),
    ("text out_proj", (2464, 512, 512)),
    ("text c_fc", (2464, 512, 2048)),
    ("text c_proj", (2464, 2048, 512)),
    ("layer4 1x1", (392, 512, 2048)),
    ("layer4 1x1", (392, 2048, 512)),
)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--repeats", type=int, default=7)
  args = ap.parse_args()
  import torch

  rng = np.random.default_rng(0)
  print(
      f"jax {jax.__version__}, torch {torch.__version__}, torch threads {torch.get_num_threads()}"
  )
  print("| M x K -> N | torch | numpy | XLA (YNNPACK dot) | XLA (Eigen dot) |")
  print("|---|---|---|---|---|")
  sums = collections.defaultdict(float)  # seconds over all shapes, per variant
  for what, (m, k, n) in SHAPES:
    name = f"{what} {m} x {k} -> {n}"
    a = rng.normal(size=(m, k)).astype(np.float32)
    b = rng.normal(size=(k, n)).astype(np.float32)
    lowered = jax.jit(lambda x, y: x @ y).lower(a, b)
    xla, eigen = lowered.compile(), lowered.compile(compiler_options=NO_YNN)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ref = a.astype(np.float64) @ b
    for out in (xla(a, b), eigen(a, b)):  # both programs compute the product
      err = np.abs(np.asarray(out) - ref).max() / np.abs(ref).max()
      assert err < 1e-5, f"gemm {name}: relative error {err:.1e}"
    fns = {
        "torch": lambda: torch.matmul(ta, tb),
        "numpy": lambda: a @ b,
        "xla": lambda: xla(a, b).block_until_ready(),
        "xla_eigen": lambda: eigen(a, b).block_until_ready(),
    }
    med = interleaved_medians(fns, args.repeats)
    flops = 2 * m * k * n
    cells = []
    for key, t in med.items():
      sums[key] += t
      cells.append(f"{1e3 * t:.1f} ms, {flops / t / 1e9:.0f} GF/s, {t / med['torch']:.2f}x")
    print(f"| {name} | " + " | ".join(cells) + " |")
  print(
      "| sum | "
      + " | ".join(f"{1e3 * t:.1f} ms, {t / sums['torch']:.2f}x" for t in sums.values())
      + " |"
  )


if __name__ == "__main__":
  main()
