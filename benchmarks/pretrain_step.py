"""Compiled RegionCLIP pretraining step: time, images/s and a model-FLOPs-utilisation estimate.

    python benchmarks/pretrain_step.py                         # tiny + RN50/800px/100 regions
    python benchmarks/pretrain_step.py --cases=tiny --repeats=10
    python benchmarks/pretrain_step.py --cases=rn50 --batch=12 --dtypes=float32,bfloat16

The step is the full one of `pretrain/step.py`: proposals, frozen teacher forward, student
forward + backward with the three losses, SGD update, all under jit with a 1-device mesh.
FLOPs come from XLA's cost analysis of the *lowered* (pre-optimisation) step: platform
independent, whereas the compiled GPU module hides convolutions and GEMMs in cuDNN / cuBLAS
custom calls that the analysis does not count. MFU = FLOPs / step time / peak. Peak:
--peak_tflops, else a table by device kind: H100/H200 dense 989 TFLOP/s bf16 and 494 TFLOP/s
for float32 (XLA runs float32 convolutions and matmuls as TF32 on these GPUs by default); CPU:
cores x 2 FMA units x 16 fp32 lanes x 2 flops x 2.5 GHz, an estimate. Synthetic
inputs (random images, boxes), random weights. Official reference: ~3.5 images/s per V100.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from regionclip_jax.models import clip as clip_lib  # noqa: E402
from regionclip_jax.pretrain.proposals import make_proposal_fn  # noqa: E402
from regionclip_jax.pretrain.step import LossConfig, make_pretrain_step  # noqa: E402
from regionclip_jax.train import optimizer as opt  # noqa: E402
from regionclip_jax.train.sharding import jit_step, make_mesh  # noqa: E402
from regionclip_jax.train.state import create_train_state  # noqa: E402

CASES = {  # name: (clip preset, image size, regions per image, default batch, context length)
    "tiny": ("tiny_rn", 64, 16, 24, 16),
    "rn50": ("RN50", 800, 100, 3, 77),
}
PEAK_TFLOPS = {
    "float32": {"NVIDIA H200": 494.0, "NVIDIA H100": 494.0, "Tesla V100": 15.7},
    "bfloat16": {"NVIDIA H200": 989.0, "NVIDIA H100": 989.0, "Tesla V100": 125.0},
}


def peak_tflops(dtype: str, override: float | None) -> float:
  if override:
    return override
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return os.cpu_count() * 2 * 16 * 2 * 2.5e9 / 1e12
  for k, v in PEAK_TFLOPS[dtype].items():
    if k.lower() in dev.device_kind.lower():
      return v
  return float("nan")


def bench(
    case: str,
    batch: int,
    dtype: str,
    repeats: int,
    regions: int | None,
    image_size: int | None = None,
):
  preset, size, r_default, _, ctx = CASES[case]
  size = image_size or size
  r = regions or r_default
  cfg = clip_lib.PRESETS[preset]
  params = jax.tree.map(np.asarray, clip_lib.init_params(cfg, seed=0))
  teacher = jax.tree.map(np.copy, params)
  cdt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  model = clip_lib.CLIP(cfg, dtype=cdt)
  tx = opt.sgd(opt.warmup_multistep_schedule(0.002, 1000, 0.001, (300_000, 525_000)))
  mask = opt.trainable_mask(
      params, (r"^visual/(layer2|layer3|layer4|attnpool)/",), (clip_lib.FROZEN_BN_REGEX,)
  )
  step = make_pretrain_step(
      model, model, tx, mask, make_proposal_fn("random", r), LossConfig(group_size=min(3, batch))
  )
  rng = np.random.default_rng(0)
  concepts = rng.normal(size=(1000, cfg.embed_dim)).astype(np.float32)
  frozen = {"teacher_params": teacher, "concept_emb": concepts, "teacher_concept_emb": concepts}
  toks = np.zeros((batch, ctx), np.int32)
  toks[:, 0], toks[:, 1:6], toks[:, 6] = 49406, rng.integers(1, 49000, (batch, 5)), 49407
  data = {
      "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
      "image_size": np.full((batch, 2), size, np.int32),
      "caption_tokens": toks,
  }
  mesh = make_mesh(1)
  state = create_train_state(params, tx, mask)
  fn, state, frozen = jit_step(step, mesh, state, frozen=frozen)
  data = jax.device_put(data)
  t0 = time.perf_counter()
  lowered = fn.lower(state, data, frozen)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  state, m = compiled(state, data, frozen)  # warm-up
  jax.block_until_ready(m)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    state, m = compiled(state, data, frozen)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  peak = peak_tflops(dtype, ARGS.peak_tflops)
  mfu = flops / med / (peak * 1e12)
  loss = float(m["loss"])
  return dict(
      case=case,
      preset=preset,
      image=size,
      regions=r,
      batch=batch,
      dtype=dtype,
      compile_s=compile_s,
      step_s=med,
      img_s=batch / med,
      tflop_step=flops / 1e12,
      tflops=flops / med / 1e12,
      peak=peak,
      mfu=mfu,
      loss=loss,
      n=repeats,
  )


def main():
  global ARGS
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--cases", default="tiny,rn50")
  p.add_argument("--batch", type=int, default=0, help="0: the case's default")
  p.add_argument("--regions", type=int, default=0)
  p.add_argument("--image_size", type=int, default=0)
  p.add_argument("--dtypes", default="float32")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--peak_tflops", type=float, default=0.0)
  ARGS = p.parse_args()
  dev = jax.devices()[0]
  print(f"device: {dev.platform} {dev.device_kind} x{jax.device_count()}; jax {jax.__version__}")
  print(
      "| case | image px | regions/img | batch | dtype | compile s | step s (median) | images/s "
      "| TFLOP/step | TFLOP/s | peak TFLOP/s | MFU |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for case in ARGS.cases.split(","):
    for dtype in ARGS.dtypes.split(","):
      r = bench(
          case,
          ARGS.batch or CASES[case][3],
          dtype,
          ARGS.repeats,
          ARGS.regions or None,
          ARGS.image_size or None,
      )
      print(
          f"| {r['case']} ({r['preset']}) | {r['image']} | {r['regions']} | {r['batch']} | {r['dtype']} "
          f"| {r['compile_s']:.1f} | {r['step_s']:.4f} | {r['img_s']:.2f} | {r['tflop_step']:.3f} "
          f"| {r['tflops']:.2f} | {r['peak']:.3g} | {100 * r['mfu']:.1f}% |",
          flush=True,
      )


if __name__ == "__main__":
  main()
