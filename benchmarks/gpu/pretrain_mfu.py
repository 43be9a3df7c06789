"""RegionCLIP pretraining step: throughput and MFU of several variants, interleaved in one process.

    python benchmarks/gpu/pretrain_mfu.py --out=/tmp/res                  # RN50, 800 px, 100 regions
    python benchmarks/gpu/pretrain_mfu.py --out=/tmp/res --tiny           # tiny_rn, 64 px, CPU check
    python benchmarks/gpu/pretrain_mfu.py --out=/tmp/res --variants=base,roi_f32 --profile=
    python benchmarks/gpu/pretrain_mfu.py --out=/tmp/res --flops_only     # lowered FLOPs only, CPU

The step is `pretrain/step.py`'s, built as benchmarks/pretrain_step.py builds it (random weights
and inputs, 1,000 concepts, group size 3, random proposals). Every variant is lowered and
compiled first (compiles in a thread pool), then the timed calls go round-robin over the
variants, so drift of clocks or of a shared machine hits all of them alike.

Model FLOPs per image = the lowered (pre-optimisation, platform independent) FLOPs of `base` with
the attention pool unfolded (OpenAI's form, `attnpool_unfolded`) / its batch; MFU = those x
images/s / peak for every variant, so neither remat's recompute nor the fold's savings change
what counts as the model's work. Each variant's own lowered FLOPs are listed too (HFU). Where
the cost analysis gives none (XLA GPU in jax 0.11), the RN50 figure of the CPU lowering is used.

Variants are settings of the config (model.dtype, model.remat, model.roi_method,
model.roi_chunk_size, batch) or experiments that need a code change to adopt (each patches the
library only while its step is traced): `teacher_bf16` stores the frozen teacher's params in
bfloat16 (param_dtype=bfloat16, no per-step cast); `roi_f32` runs RoIAlign's two separable
contractions in float32 at Precision.HIGHEST, as before ops.roi_align._contract gained its
16-bit branch (bfloat16 operands, float32 accumulation), the "before" of that change; `before`
is the configuration of the first GPU measurement. `unfolded` is a config setting: the attention pool
with keys and values of every token as OpenAI's model.py (`fold_attention_pool=False`, about a
third more region-head FLOPs than the default folded pool), the "before" of that change.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib
import json
import math
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import offline  # noqa: E402
import profile_summary  # noqa: E402

offline.stub_missing()
from regionclip_jax.models import clip as clip_lib  # noqa: E402
from regionclip_jax.pretrain.proposals import make_proposal_fn  # noqa: E402
from regionclip_jax.pretrain.step import LossConfig, make_pretrain_step  # noqa: E402
from regionclip_jax.train import optimizer as opt  # noqa: E402
from regionclip_jax.train.sharding import jit_step, make_mesh  # noqa: E402
from regionclip_jax.train.state import create_train_state  # noqa: E402

roi_mod = importlib.import_module("regionclip_jax.ops.roi_align")  # the package re-exports the fn

PEAK = {"bfloat16": 989.0, "float32": 494.0}  # H100 / H200 dense TFLOP/s (float32 runs as TF32)
BASE = dict(  # the pretraining presets' settings at bf16 compute (configs/pretrain.py)
    dtype="bfloat16",
    batch=12,
    chunk=128,
    roi_method="separable",
    remat=False,
    teacher_bf16=False,
    roi_f32=False,
    unfolded=False,
)
VARIANTS = {
    "base": {},
    # the configuration of the first GPU measurement (155.6 images/s): OpenAI's unfolded attention
    # pool, RoIAlign's contractions in float32 at Precision.HIGHEST, chunks of 64
    "before": dict(unfolded=True, roi_f32=True, chunk=64),
    "teacher_bf16": dict(teacher_bf16=True),
    "roi_f32": dict(roi_f32=True),
    "attnpool_unfolded": dict(unfolded=True),
    "chunk64": dict(chunk=64),
    "chunk16": dict(chunk=16),
    "gather": dict(roi_method="gather"),
    "remat": dict(remat=True),
    "batch24": dict(batch=24),
    "teacher_bf16_b24": dict(teacher_bf16=True, batch=24),
    "tf32": dict(dtype="float32"),
}
# in priority order: compiles start in this order, and those not started at --budget_s are dropped
DEFAULT = "before,base,batch24,teacher_bf16,chunk64,roi_f32,attnpool_unfolded,remat"
# Model FLOPs of the RN50 step (800 px, 100 + 1 regions, unfolded pool) per image, from the CPU
# lowering (`--flops_only`): XLA GPU's cost analysis reports none in jax 0.11.
RN50_GFLOP_IMAGE = 1602.7


def _contract_f32(wa, wb, f, lo=None):
  """ops.roi_align._contract as it was before its 16-bit branch: float32 at Precision.HIGHEST."""
  del lo
  return roi_mod._contract_exact(wa, wb, f)


@contextlib.contextmanager
def roi_patch(enabled: bool):
  """Trace-time patch of RoIAlign's contraction (lowering is single-threaded, so this is safe)."""
  orig = roi_mod._contract
  if enabled:
    roi_mod._contract = _contract_f32
  try:
    yield
  finally:
    roi_mod._contract = orig


@functools.cache
def init_params(preset: str):
  return jax.tree.map(np.asarray, clip_lib.init_params(clip_lib.PRESETS[preset], seed=0))


def build(v: dict, preset: str, size: int, regions: int, ctx: int):
  """-> (lower() thunk, state, data, frozen) of one variant."""
  cfg = clip_lib.PRESETS[preset]
  # Set both ways, so that `base` folds and `attnpool_unfolded` does not for every preset.
  cfg = dataclasses.replace(
      cfg, vision=dataclasses.replace(cfg.vision, fold_attention_pool=not v["unfolded"])
  )
  b = v["batch"]
  cdt = jnp.bfloat16 if v["dtype"] == "bfloat16" else jnp.float32
  params = init_params(preset)
  student = clip_lib.CLIP(cfg, dtype=cdt, remat=v["remat"])
  if v["teacher_bf16"]:
    teacher = clip_lib.CLIP(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    t_params = jax.tree.map(lambda x: np.asarray(x, jnp.bfloat16), params)
  else:
    teacher, t_params = clip_lib.CLIP(cfg, dtype=cdt), jax.tree.map(np.copy, params)
  tx = opt.sgd(opt.warmup_multistep_schedule(0.002, 1000, 0.001, (300_000, 525_000)))
  mask = opt.trainable_mask(
      params, (r"^visual/(layer2|layer3|layer4|attnpool)/",), (clip_lib.FROZEN_BN_REGEX,)
  )
  step = make_pretrain_step(
      student,
      teacher,
      tx,
      mask,
      make_proposal_fn("random", regions),
      LossConfig(group_size=3),
      region_kw=dict(roi_method=v["roi_method"], chunk_size=v["chunk"]),
  )
  rng = np.random.default_rng(0)
  concepts = rng.normal(size=(1000, cfg.embed_dim)).astype(np.float32)
  frozen = {"teacher_params": t_params, "concept_emb": concepts, "teacher_concept_emb": concepts}
  toks = np.zeros((b, ctx), np.int32)
  toks[:, 0], toks[:, 1:6], toks[:, 6] = 49406, rng.integers(1, 49000, (b, 5)), 49407
  data = {
      "image": rng.normal(size=(b, size, size, 3)).astype(np.float32),
      "image_size": np.full((b, 2), size, np.int32),
      "caption_tokens": toks,
  }
  state = create_train_state(params, tx, mask)
  fn, state, frozen = jit_step(step, make_mesh(1), state, frozen=frozen)
  data = jax.device_put(data)

  def lower():
    with roi_patch(v["roi_f32"]):
      return fn.lower(state, data, frozen)

  return lower, state, data, frozen


def _flops(cost) -> float:
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--variants", default=DEFAULT)
  p.add_argument("--repeats", type=int, default=6)
  p.add_argument("--tiny", action="store_true", help="tiny_rn, 64 px, 16 regions, 2 repeats")
  p.add_argument("--profile", default="before,best", help="variants to trace ('best': fastest)")
  p.add_argument("--profile_steps", type=int, default=3)
  p.add_argument("--compile_workers", type=int, default=6)
  p.add_argument("--budget_s", type=float, default=360.0, help="start no compile after this")
  p.add_argument(
      "--grace_s",
      type=float,
      default=90.0,
      help="after the budget, wait this long for running ones",
  )
  p.add_argument(
      "--flops_only",
      action="store_true",
      help="lower each variant and print its FLOPs per step (no compile, no timing; runs on CPU)",
  )
  a = p.parse_args()
  t_start = time.perf_counter()
  os.makedirs(a.out, exist_ok=True)
  preset, size, regions, ctx = ("tiny_rn", 64, 16, 16) if a.tiny else ("RN50", 800, 100, 77)
  repeats = 2 if a.tiny else a.repeats
  dev = jax.devices()[0]
  on_gpu = dev.platform == "gpu"
  names = a.variants.split(",")
  specs = {n: {**BASE, **VARIANTS[n]} for n in names}
  if a.tiny:  # tiny batches stay multiples of the group size 3
    specs = {n: {**s, "batch": 6 if s["batch"] > 12 else 3} for n, s in specs.items()}
  print(f"device {dev.device_kind} ({dev.platform}); jax {jax.__version__}; {preset} {size}px")
  if a.flops_only:
    for n in names:
      low = build(specs[n], preset, size, regions, ctx)[0]()
      tflop = _flops(low.cost_analysis()) / 1e12
      b = specs[n]["batch"]
      print(f"{n}: lowered {tflop:.3f} TFLOP per step of {b}, {1e3 * tflop / b:.1f} GFLOP/image")
    return
  built, lowered, compiled, compile_s = {}, {}, {}, {}

  def do_compile(n):
    t = time.perf_counter()
    try:
      return n, lowered[n].compile(), time.perf_counter() - t
    except Exception as e:  # e.g. out of memory: drop this variant, keep the others
      print(f"compile of {n} failed: {e!r}"[:500], flush=True)
      return n, None, 0.0

  pool = concurrent.futures.ThreadPoolExecutor(a.compile_workers)
  futs = []
  for n in names:  # each compile starts as soon as its step is lowered
    t = time.perf_counter()
    built[n] = build(specs[n], preset, size, regions, ctx)
    lowered[n] = built[n][0]()
    futs.append(pool.submit(do_compile, n))
    print(f"lowered {n} in {time.perf_counter() - t:.1f}s {specs[n]}", flush=True)
  left = max(1.0, a.budget_s - (time.perf_counter() - t_start))
  concurrent.futures.wait(futs, timeout=left)
  pool.shutdown(wait=False, cancel_futures=True)  # compiles not started yet are dropped
  # A compile still running would autotune on the GPU during the timing and the profiles (it
  # perturbed both in the first runs): wait up to --grace_s for it, and keep it if it finishes.
  late = [f for f in futs if f.running()]
  if late:
    print(f"compile budget spent: waiting up to {a.grace_s:.0f}s for {len(late)}", flush=True)
    concurrent.futures.wait(late, timeout=a.grace_s)
  for f in futs:
    if f.done() and not f.cancelled():
      n, c, s = f.result()
      if c is not None:
        compiled[n], compile_s[n] = c, s
        print(f"compiled {n} in {s:.1f}s", flush=True)
  if set(names) - set(compiled):
    print(f"not compiled in time (dropped): {sorted(set(names) - set(compiled))}", flush=True)
  running = sum(f.running() for f in futs)
  names = [n for n in names if n in compiled]
  states = {n: built[n][1] for n in names}

  def run(n):
    _, _, data, frozen = built[n]
    states[n], m = compiled[n](states[n], data, frozen)
    return m

  times = {n: [] for n in names}
  losses = {}
  for n in list(names):
    try:
      losses[n] = float(jax.block_until_ready(run(n))["loss"])  # warm-up
    except Exception as e:
      print(f"{n} failed at run time: {e!r}"[:500], flush=True)
      names.remove(n)
  for _ in range(repeats):
    for n in names:
      t = time.perf_counter()
      jax.block_until_ready(run(n))
      times[n].append(time.perf_counter() - t)
  rows = []
  base_n = "base" if "base" in names else names[0]
  # Model FLOPs are those of the step as OpenAI's model computes it (the attention pool's keys
  # and values for every token), so that the fold shows as a gain and not as lost "work".
  ref_n = next((n for n in ("attnpool_unfolded", "before") if n in lowered), None)
  if ref_n:
    ref_low, ref_b = lowered[ref_n], specs[ref_n]["batch"]
  else:
    ref_b = specs[base_n]["batch"]
    ref_low = build({**BASE, "unfolded": True, "batch": ref_b}, preset, size, regions, ctx)[0]()
  flop_img = _flops(ref_low.cost_analysis()) / ref_b
  flop_src = "lowered, attention pool unfolded"
  if not math.isfinite(flop_img) and not a.tiny:
    flop_img = RN50_GFLOP_IMAGE * 1e9
    flop_src = "the CPU lowering of this step with the pool unfolded: XLA GPU reports none"
  for n in names:
    s, med = specs[n], statistics.median(times[n])
    img_s = s["batch"] / med
    peak = PEAK[s["dtype"]] if on_gpu else os.cpu_count() * 2 * 16 * 2 * 2.5e-3  # CPU: a guess
    rows.append(
        dict(
            variant=n,
            **s,
            compile_s=compile_s[n],
            step_s=med,
            step_min_s=min(times[n]),
            img_s=img_s,
            hlo_tflop_step=_flops(lowered[n].cost_analysis()) / 1e12,
            xla_compiled_tflop=_flops(compiled[n].cost_analysis()) / 1e12,
            model_tflops=flop_img * img_s / 1e12,
            peak_tflops=peak,
            mfu=flop_img * img_s / (peak * 1e12),
            hfu=_flops(lowered[n].cost_analysis()) / med / (peak * 1e12),
            loss=losses[n],
        )
    )
  best = max(rows, key=lambda r: r["img_s"])["variant"]
  md = [
      f"## Pretraining step variants ({preset}, {size} px, {regions} regions + 1 global)",
      "",
      f"{dev.device_kind}, jax {jax.__version__}; median of {repeats} interleaved calls after a "
      f"warm-up; model FLOPs {flop_img / 1e9:.1f} GFLOP/image ({flop_src}).",
      "",
      "| variant | dtype | batch | remat | roi | chunk | teacher bf16 | roi f32 | unfolded pool "
      "| compile s | step s | images/s | x base | HLO TFLOP/step | model TFLOP/s | MFU | HFU "
      "| loss |",
      "|" + "---|" * 18,
  ]
  ref = next((r["img_s"] for r in rows if r["variant"] == base_n), rows[0]["img_s"])
  for r in rows:
    md.append(
        f"| {r['variant']} | {r['dtype']} | {r['batch']} | {r['remat']} | {r['roi_method']} "
        f"| {r['chunk']} | {r['teacher_bf16']} | {r['roi_f32']} | {r['unfolded']} "
        f"| {r['compile_s']:.1f} "
        f"| {r['step_s']:.4f} | {r['img_s']:.1f} | {r['img_s'] / ref:.2f} "
        f"| {r['hlo_tflop_step']:.4g} | {r['model_tflops']:.1f} "
        f"| {100 * r['mfu']:.1f}% of {r['peak_tflops']:.3g} | {100 * r['hfu']:.1f}% "
        f"| {r['loss']:.3f} |"
    )
  md += [
      "",
      f"Fastest: `{best}`. MFU: the model FLOPs per image x images/s / peak; "
      "HFU: the variant's own lowered FLOPs (remat's recompute counted, what the fold saves "
      "not) / step time / peak.",
  ]
  hits = [r["variant"] for r in rows if r["mfu"] >= 0.40]
  md.append(f"MFU >= 40%: {', '.join(hits) if hits else 'none'}.")
  if running:
    md.append(f"{running} compile(s) past the budget still ran during the timing (perturbed).")
  with open(os.path.join(a.out, "pretrain_mfu.md"), "w") as f:
    f.write("\n".join(md) + "\n")
  with open(os.path.join(a.out, "pretrain_mfu.json"), "w") as f:
    json.dump({"device": dev.device_kind, "rows": rows, "times": times}, f, indent=1)
  print("\n".join(md), flush=True)

  prof = [best if n == "best" else n for n in a.profile.split(",") if n]
  sections = []
  for n in dict.fromkeys(x for x in prof if x in names):
    d = os.path.join(a.out, "traces", f"pretrain_{n}")
    sections.append(
        profile_summary.profile(
            d, f"pretrain step `{n}`", a.profile_steps, lambda: jax.block_until_ready(run(n))
        )
    )
  with open(os.path.join(a.out, "profile_pretrain.md"), "w") as f:
    f.write("\n".join(sections))
  print(f"done in {time.perf_counter() - t_start:.0f}s", flush=True)
  sys.stdout.flush()
  os._exit(0)  # do not wait for compiles still running past the budget


if __name__ == "__main__":
  main()
