r"""RN50-C4 open-vocabulary detector: inference images/s and train step time at 800 px.

  python benchmarks/detector.py [--height=800 --width=1088 --batch=1 --repeats=3 \
      --variants=fp32,bf16 --proposals=1000 --classes=65]

Inference = frozen RPN (test top-k 6000 / `--proposals`) + RoIAlign 14x14 -> layer4 -> attnpool on
every proposal + text classifier + per-class NMS. Train step = frozen RPN (train top-k 12000 /
2000) + 512 sampled RoIs per image + forward/backward + SGD update of res3-res5/attnpool/bbox_pred.
Random weights (numpy init; timings do not depend on values). Variants run side by side in one
process; each figure is the median of `--repeats` timed calls after one warm-up (compile) call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def _median_time(fn, repeats):
  out = fn()
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def run_variant(name, dtype, args):
  from regionclip_jax.detection import builders
  from regionclip_jax.detection.settings import InferenceSettings, RoIHeadSettings, RPNSettings
  from regionclip_jax.detection.inference import make_classify_fn, make_proposal_fn, make_region_fn
  from regionclip_jax.detection.train_lib import make_detector_step
  from regionclip_jax.detection.finetune import TRAINABLE_DETECTOR
  from regionclip_jax.models.clip import FROZEN_BN_REGEX, get_config
  from regionclip_jax.train import optimizer as optim
  from regionclip_jax.train.state import create_train_state

  cfg = get_config("RN50")
  h, w, n = args.height, args.width, args.batch
  det = builders.build_detector(cfg, pooler_resolution=14, dtype=dtype, roi_chunk_size=args.chunk)
  rpn, gen = builders.build_rpn(cfg, dtype=dtype)
  dv = builders.init_detector(det, 224, 0)
  rv = builders.init_rpn(rpn, 224, 1)
  rs = RPNSettings(post_nms_topk_test=args.proposals)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(n, h, w, 3)), jnp.float32)
  sizes = jnp.asarray([[h, w]] * n, jnp.float32)
  emb = jnp.asarray(rng.normal(size=(args.classes, cfg.embed_dim)), jnp.float32)
  res = {"variant": name}

  if "infer" in args.parts:
    props_fn = make_proposal_fn(rpn, gen, rs, training=False)
    region_fn = make_region_fn(det)
    cls_fn = make_classify_fn(InferenceSettings())

    def infer():
      b, logits, v = props_fn(rv, images, sizes)
      f, d = region_fn(dv, images, b)
      return cls_fn(f, d, b, v, sizes, emb)

    t0 = time.perf_counter()
    jax.block_until_ready(infer())
    res["infer_first_call_s"] = time.perf_counter() - t0
    dt = _median_time(infer, args.repeats)
    res["infer_s_per_batch"] = dt
    res["infer_images_per_s"] = n / dt

  if "train" in args.parts:
    tx = optim.make_optimizer("sgd", 0.002, momentum=0.9, weight_decay=1e-4, clip_norm=None)
    mask = optim.trainable_mask(dv, TRAINABLE_DETECTOR, (FROZEN_BN_REGEX,))
    state = create_train_state(dv, tx, mask)
    step = jax.jit(
        make_detector_step(det, rpn, gen, RoIHeadSettings(), RPNSettings(), tx, mask),
        donate_argnums=0,
    )
    k = 8
    boxes = np.zeros((n, k, 4), np.float32)
    for i in range(n):
      for j in range(k):
        bw, bh = rng.uniform(0.05, 0.25) * w, rng.uniform(0.05, 0.25) * h
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        boxes[i, j] = [x, y, x + bw, y + bh]
    batch = {
        "image": images,
        "image_size": sizes,
        "boxes": jnp.asarray(boxes),
        "box_mask": jnp.ones((n, k), bool),
        "labels": jnp.asarray(rng.integers(0, args.classes, (n, k)), jnp.int32),
    }
    frozen = {"rpn": rv, "text_emb": emb}
    holder = {"s": state}

    def train():
      holder["s"], m = step(holder["s"], batch, frozen)
      return m["loss"]

    t0 = time.perf_counter()
    jax.block_until_ready(train())
    res["train_first_call_s"] = time.perf_counter() - t0
    res["train_step_s"] = _median_time(train, args.repeats)
  return res


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--height", type=int, default=800)
  p.add_argument("--width", type=int, default=1088)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--proposals", type=int, default=1000)
  p.add_argument("--classes", type=int, default=65)
  p.add_argument("--chunk", type=int, default=64)
  p.add_argument("--variants", default="fp32")
  p.add_argument("--parts", default="infer,train")
  p.add_argument("--json", default="")
  args = p.parse_args()
  args.parts = args.parts.split(",")
  dtypes = {"fp32": "float32", "bf16": "bfloat16"}
  dev = jax.devices()[0]
  print(
      f"# devices: {jax.device_count()} x {dev.device_kind} ({dev.platform}); jax {jax.__version__}; "
      f"{platform.machine()} {os.cpu_count()} cpus; {args}",
      flush=True,
  )
  rows = []
  for v in args.variants.split(","):
    r = run_variant(v, dtypes[v], args)
    rows.append(r)
    print(json.dumps(r), flush=True)
  base = rows[0]
  print(
      "\n| variant | infer images/s | infer s/batch | train step s | first infer call s | first train call s |"
  )
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(
        f"| {r['variant']} | {r.get('infer_images_per_s', float('nan')):.3f} | "
        f"{r.get('infer_s_per_batch', float('nan')):.3f} | {r.get('train_step_s', float('nan')):.3f} | "
        f"{r.get('infer_first_call_s', float('nan')):.1f} | {r.get('train_first_call_s', float('nan')):.1f} |"
    )
  if len(rows) > 1:
    for r in rows[1:]:
      ratios = {k: base[k] / r[k] for k in ("infer_s_per_batch", "train_step_s") if k in r}
      print(f"speed-up of {r['variant']} over {base['variant']}: {ratios}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "device": dev.device_kind, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
