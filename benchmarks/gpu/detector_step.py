"""RN50-C4 detector train step: step time, images/s and a profile of the compiled step.

    python benchmarks/gpu/detector_step.py --out=/tmp/res [--batch=2 --dtypes=bfloat16]
    python benchmarks/gpu/detector_step.py --out=/tmp/res --tiny      # tiny_rn, 64 px, CPU check

The step of benchmarks/detector.py ("train" part): frozen RPN (train top-k 12000 / 2000) + 512
sampled RoIs per image + forward / backward + SGD on res3-res5, attnpool and bbox_pred. Images
800 x 1088, 8 random GT boxes per image, random weights. Dtypes run interleaved in one process.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import offline  # noqa: E402
import profile_summary  # noqa: E402

offline.stub_missing()
from regionclip_jax.detection import builders  # noqa: E402
from regionclip_jax.detection.finetune import TRAINABLE_DETECTOR  # noqa: E402
from regionclip_jax.detection.settings import RoIHeadSettings, RPNSettings  # noqa: E402
from regionclip_jax.detection.train_lib import make_detector_step  # noqa: E402
from regionclip_jax.models.clip import FROZEN_BN_REGEX, get_config  # noqa: E402
from regionclip_jax.train import optimizer as optim  # noqa: E402
from regionclip_jax.train.state import create_train_state  # noqa: E402


def build(dtype: str, preset: str, h: int, w: int, n: int, classes: int, tiny: bool):
  """-> (jitted step, state, batch, frozen)."""
  cfg = get_config(preset)
  pool = 2 * cfg.vision.image_size // 32
  det = builders.build_detector(cfg, pooler_resolution=pool, dtype=dtype)
  rpn, gen = builders.build_rpn(cfg, dtype=dtype)
  dv, rv = builders.init_detector(det, cfg.vision.image_size, 0), builders.init_rpn(rpn, 224, 1)
  rs = RPNSettings(pre_nms_topk_train=500, post_nms_topk_train=100) if tiny else RPNSettings()
  roi = RoIHeadSettings(batch_size_per_image=64) if tiny else RoIHeadSettings()
  tx = optim.make_optimizer("sgd", 0.002, momentum=0.9, weight_decay=1e-4, clip_norm=None)
  mask = optim.trainable_mask(dv, TRAINABLE_DETECTOR, (FROZEN_BN_REGEX,))
  step = jax.jit(make_detector_step(det, rpn, gen, roi, rs, tx, mask), donate_argnums=0)
  rng = np.random.default_rng(0)
  k = 8
  wh = rng.uniform(0.05, 0.25, (n, k, 2)) * [w, h]
  xy = rng.uniform(0, 1, (n, k, 2)) * ([w, h] - wh)
  batch = {
      "image": jnp.asarray(rng.normal(size=(n, h, w, 3)), jnp.float32),
      "image_size": jnp.asarray([[h, w]] * n, jnp.float32),
      "boxes": jnp.asarray(np.concatenate([xy, xy + wh], -1), jnp.float32),
      "box_mask": jnp.ones((n, k), bool),
      "labels": jnp.asarray(rng.integers(0, classes, (n, k)), jnp.int32),
  }
  emb = jnp.asarray(rng.normal(size=(classes, cfg.embed_dim)), jnp.float32)
  return step, create_train_state(dv, tx, mask), batch, {"rpn": rv, "text_emb": emb}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--dtypes", default="bfloat16")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--classes", type=int, default=65)
  p.add_argument("--profile_steps", type=int, default=3)
  p.add_argument("--tiny", action="store_true", help="tiny_rn, 64 x 64, 2 repeats")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  preset, h, w = ("tiny_rn", 64, 64) if a.tiny else ("RN50", 800, 1088)
  repeats = 2 if a.tiny else a.repeats
  dev = jax.devices()[0]
  built, first, times = {}, {}, {}
  for dt in a.dtypes.split(","):
    built[dt] = list(build(dt, preset, h, w, a.batch, a.classes, a.tiny))
    t = time.perf_counter()
    step, state, batch, frozen = built[dt]
    built[dt][1], m = step(state, batch, frozen)
    jax.block_until_ready(m)
    first[dt], times[dt] = time.perf_counter() - t, []
    print(f"{dt}: first call (compile + run) {first[dt]:.1f}s, loss {float(m['loss']):.3f}")

  def run(dt):
    step, state, batch, frozen = built[dt]
    built[dt][1], m = step(state, batch, frozen)
    return m

  for _ in range(repeats):
    for dt in built:
      t = time.perf_counter()
      jax.block_until_ready(run(dt))
      times[dt].append(time.perf_counter() - t)
  md = [
      f"## Detector train step ({preset}, {h} x {w}, batch {a.batch})",
      "",
      f"{dev.device_kind}, jax {jax.__version__}; median of {repeats} interleaved calls.",
      "",
      "| dtype | first call s | step s | train images/s |",
      "|---|---|---|---|",
  ]
  for dt, ts in times.items():
    med = statistics.median(ts)
    md.append(f"| {dt} | {first[dt]:.1f} | {med:.4f} | {a.batch / med:.1f} |")
  # the timings are written before profiling, so that a profiler failure loses only the profile
  with open(os.path.join(a.out, "detector_step.md"), "w") as f:
    f.write("\n".join(md) + "\n")
  with open(os.path.join(a.out, "detector_step.json"), "w") as f:
    json.dump({"device": dev.device_kind, "first_s": first, "times": times}, f, indent=1)
  print("\n".join(md), flush=True)
  sections = []
  for dt in built:
    d = os.path.join(a.out, "traces", f"detector_{dt}")
    sections.append(
        profile_summary.profile(
            d, f"detector train step {dt}", a.profile_steps, lambda: jax.block_until_ready(run(dt))
        )
    )
  with open(os.path.join(a.out, "profile_detector.md"), "w") as f:
    f.write("\n".join(sections))


if __name__ == "__main__":
  main()
