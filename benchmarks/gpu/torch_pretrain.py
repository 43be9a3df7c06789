"""The RegionCLIP pretraining step in PyTorch (OpenAI's model.py towers), timed like pretrain_mfu.py.

    python benchmarks/gpu/torch_pretrain.py --out=/tmp/res [--jax_json=/tmp/res/pretrain_mfu.json]
    python benchmarks/gpu/torch_pretrain.py --out=/tmp/res --tiny        # tiny, 64 px, CPU check

Same work as the JAX step: a frozen teacher ModifiedResNet and the student's stem..layer3 on the
whole image -> RoIAlign 14 x 14 (aligned, adaptive sampling, written here as two separable
contractions) -> layer4 -> attnpool for 100 random proposals (+ the global box for the student);
the frozen text transformer; region distillation, region contrastive and image-text losses;
SGD with momentum, weight decay and per-tensor clipping on layer2-4 + attnpool (BN frozen:
eval mode). bf16 autocast, channels_last, cudnn.benchmark. OpenAI's model.py is imported by
path from the clip-anytorch wheel (its package __init__ needs torchvision).

With --jax_json (pretrain_mfu.json) the table adds MFU from the JAX model FLOPs per image and
the JAX / torch images/s ratios.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import math
import os
import statistics
import tempfile
import time
import zipfile

import torch
import torch.nn.functional as F

TAU, THRESH, GROUP = 0.01, 0.1, 3


def openai_model_py(wheel_dirs=()):
  """OpenAI's clip/model.py: from an installed clip-anytorch, else from its wheel in `wheel_dirs`."""
  spec = importlib.util.find_spec("clip")
  path = os.path.join(list(spec.submodule_search_locations)[0], "model.py") if spec else ""
  if not os.path.exists(path):
    wheels = [
        w for d in wheel_dirs for w in sorted(glob.glob(os.path.join(d, "clip_anytorch-*.whl")))
    ]
    if not wheels:
      return None
    path = os.path.join(tempfile.mkdtemp(), "model.py")
    with zipfile.ZipFile(wheels[-1]) as z, open(path, "wb") as f:
      f.write(z.read("clip/model.py"))
  mspec = importlib.util.spec_from_file_location("_openai_clip_model", path)
  mod = importlib.util.module_from_spec(mspec)
  mspec.loader.exec_module(mod)
  print(f"OpenAI model.py: {path}", flush=True)
  return mod


def axis_weights(start, size, out: int, length: int):
  """[R] start / size (feature cells) -> [R, out, length] RoIAlign weights along one axis."""
  grid = max(1, math.ceil(length / out) + 1)  # adaptive samples per bin, boxes inside the map
  g = torch.ceil(size / out).clamp(min=1)  # [R]
  i = torch.arange(grid, device=start.device, dtype=start.dtype)
  p = torch.arange(out, device=start.device, dtype=start.dtype)
  binsz = (size / out)[:, None, None]
  pos = start[:, None, None] + (p[None, :, None] + (i + 0.5) / g[:, None, None]) * binsz
  use = (i[None, None, :] < g[:, None, None]) & (pos >= -1) & (pos <= length)  # [R, out, G]
  pos = pos.clamp(0, length - 1)
  cells = torch.arange(length, device=start.device, dtype=start.dtype)
  tent = (1 - (pos[..., None] - cells).abs()).clamp(min=0) * use[..., None]
  return tent.sum(2) / g[:, None, None]


def roi_align(res4, boxes, out: int, scale: float):
  """res4 [N, C, H, W] (channels_last), boxes [N, R, 4] image px -> [N * R, C, out, out]."""
  n, c, h, w = res4.shape
  b = boxes.reshape(-1, 4) * scale - 0.5
  wy = axis_weights(b[:, 1], b[:, 3] - b[:, 1], out, h).view(n, -1, out, h)
  wx = axis_weights(b[:, 0], b[:, 2] - b[:, 0], out, w).view(n, -1, out, w)
  f = res4.permute(0, 2, 3, 1)  # [N, H, W, C], a view of the channels_last buffer
  crops = []
  for k in range(n):
    t = torch.einsum("rph,hwc->rpwc", wy[k].to(f.dtype), f[k])
    crops.append(torch.einsum("rqw,rpwc->rpqc", wx[k].to(f.dtype), t))
  return torch.cat(crops).permute(0, 3, 1, 2)  # NCHW view with channels_last memory


def check_roi_align():
  """float32 agreement with regionclip_jax.ops.roi_align on random boxes inside the map (CPU)."""
  import sys

  import numpy as np

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  from regionclip_jax.ops.roi_align import roi_align as jax_roi_align

  rng = np.random.default_rng(1)
  feats = rng.normal(size=(2, 13, 17, 8)).astype(np.float32)
  wh = rng.uniform(4, 200, (2, 9, 2))
  xy = rng.uniform(0, 1, (2, 9, 2)) * ([17 * 16, 13 * 16] - wh)
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  ref = np.asarray(jax_roi_align(feats, boxes, 7, 1 / 16, 0, True))  # [N, R, 7, 7, C]
  f = torch.from_numpy(feats).permute(0, 3, 1, 2)
  out = roi_align(f, torch.from_numpy(boxes), 7, 1 / 16).permute(0, 2, 3, 1).numpy()
  err = float(np.abs(out - ref.reshape(out.shape)).max())
  print(f"torch RoIAlign vs regionclip_jax.ops.roi_align: max |diff| {err:.2e}", flush=True)
  return err


def res4_of(visual, x):
  x = visual.relu1(visual.bn1(visual.conv1(x)))
  x = visual.relu2(visual.bn2(visual.conv2(x)))
  x = visual.avgpool(visual.relu3(visual.bn3(visual.conv3(x))))
  return visual.layer3(visual.layer2(visual.layer1(x)))


def grouped(x, b):
  return x.reshape(b // GROUP, -1, x.shape[-1])


def losses(s_reg, t_reg, s_glob, text, concepts):
  """Region distillation + region contrastive + image-text (all float32), as pretrain/losses.py."""
  b = s_glob.shape[0]
  s, t = F.normalize(grouped(s_reg, b), dim=-1), F.normalize(grouped(t_reg, b), dim=-1)
  c = F.normalize(concepts, dim=-1)
  probs = torch.softmax(t @ c.T / TAU, -1)
  max_p, targets = probs.max(-1)
  keep = max_p > THRESH
  keep = torch.where(keep.any(-1, keepdim=True), keep, torch.ones_like(keep))
  log_q = torch.log_softmax(s @ c.T / TAU, -1)
  kl = (torch.xlogy(probs, probs) - probs * log_q).sum(-1)
  distill = ((kl * keep).sum(-1) / keep.sum(-1)).mean()
  logits = torch.einsum("gid,gjd->gij", s, c[targets]) / TAU
  neg = torch.finfo(torch.float32).min
  pos = (targets[:, :, None] == targets[:, None, :]) & keep[:, None, :]
  row = torch.logsumexp(logits.masked_fill(~keep[:, None, :], neg), -1)
  row = row - torch.logsumexp(logits.masked_fill(~pos, neg), -1)
  contrast = ((row * keep).sum(-1) / keep.sum(-1)).mean()
  it = F.normalize(s_glob, dim=-1) @ F.normalize(text, dim=-1).T / TAU
  lab = torch.arange(b, device=it.device)
  return distill + contrast + (F.cross_entropy(it, lab) + F.cross_entropy(it.T, lab)) / 2


def skip(out: str, why: str):
  print(why, flush=True)
  with open(os.path.join(out, "torch_pretrain.md"), "w") as f:
    f.write(f"## PyTorch step\n\n{why}\n")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--batch", type=int, default=12)
  p.add_argument("--repeats", type=int, default=6)
  p.add_argument("--compile", action="store_true", help="torch.compile the res4 and head calls")
  p.add_argument("--jax_json", default="")
  p.add_argument("--wheels", default="", help="comma-separated folders to find clip-anytorch in")
  p.add_argument("--tiny", action="store_true", help="tiny ResNet, 64 px, 16 regions, CPU")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if dev.type == "cpu" and not a.tiny:
    return skip(a.out, f"skipped: torch {torch.__version__} sees no CUDA device")
  torch.backends.cudnn.benchmark = True
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  if a.tiny:
    kw = dict(embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16)
    kw.update(context_length=16, transformer_width=64, transformer_heads=1, transformer_layers=2)
    size, regions, ctx, batch, repeats = 64, 16, 16, 3, 2
  else:
    kw = dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64)
    kw.update(context_length=77, transformer_width=512, transformer_heads=8, transformer_layers=12)
    size, regions, ctx, batch, repeats = 800, 100, 77, a.batch, a.repeats
  roi_err = check_roi_align() if a.tiny else float("nan")
  m = openai_model_py([d for d in a.wheels.split(",") if d])
  if m is None:
    skip(a.out, f"skipped: OpenAI's model.py not found (no clip-anytorch, no wheel in {a.wheels})")
    return
  torch.manual_seed(0)
  student = m.CLIP(vision_patch_size=None, vocab_size=49408, **kw).to(dev)
  teacher = m.CLIP(vision_patch_size=None, vocab_size=49408, **kw).visual.to(dev)
  for mod in (student, teacher):
    mod.eval().to(memory_format=torch.channels_last).requires_grad_(False)
  train = [student.visual.layer2, student.visual.layer3, student.visual.layer4]
  train.append(student.visual.attnpool)
  params = []
  for mod in train:
    for name, prm in mod.named_parameters():
      if ".bn" not in f".{name}" and "downsample.1" not in name:  # BN frozen, as FROZEN_BN
        params.append(prm.requires_grad_(True))
  sgd = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=1e-4, foreach=True)
  pool = 2 * (kw["image_resolution"] // 32)
  scale = 1 / 16
  g = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, size, size, generator=g).to(dev)
  images = images.contiguous(memory_format=torch.channels_last)
  wh = (0.15 + 0.65 * torch.rand(batch, regions, 2, generator=g)) * size
  xy = torch.rand(batch, regions, 2, generator=g) * (size - wh)
  props = torch.cat([xy, xy + wh], -1).to(dev)
  glob = torch.tensor([0.0, 0.0, size, size], device=dev).expand(batch, 1, 4)
  boxes = torch.cat([props, glob], 1)
  tokens = torch.zeros(batch, ctx, dtype=torch.long)
  tokens[:, 0], tokens[:, 6] = 49406, 49407
  tokens[:, 1:6] = torch.randint(1, 49000, (batch, 5), generator=g)
  tokens = tokens.to(dev)
  concepts = torch.randn(1000, kw["embed_dim"], generator=g).to(dev)
  res4_fn = lambda vis, x: res4_of(vis, x)
  head_fn = lambda vis, x: vis.attnpool(vis.layer4(x))
  if a.compile:
    res4_fn, head_fn = torch.compile(res4_fn), torch.compile(head_fn)
  amp = torch.autocast(dev.type, dtype=torch.bfloat16)

  def step():
    with torch.no_grad(), amp:
      t_reg = head_fn(teacher, roi_align(res4_fn(teacher, images), props, pool, scale))
      text = student.encode_text(tokens)
    with amp:
      s = head_fn(student.visual, roi_align(res4_fn(student.visual, images), boxes, pool, scale))
    s = s.float().view(batch, regions + 1, -1)
    loss = losses(s[:, :regions], t_reg.float(), s[:, -1], text.float(), concepts)
    loss.backward()
    with torch.no_grad():
      for prm in params:  # per-tensor clipping at 5, as optimizer.clip_type="per_tensor"
        prm.grad.mul_((5.0 / (prm.grad.norm() + 1e-6)).clamp(max=1.0))
    sgd.step()
    sgd.zero_grad(set_to_none=True)
    return loss

  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  t0 = time.perf_counter()
  for _ in range(2):  # warm-up: cudnn autotuning, torch.compile
    loss = float(step().detach())
  first_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    sync()
    t = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  name = "torch bf16 autocast" + (" + torch.compile" if a.compile else " (eager)")
  row = dict(variant=name, batch=batch, step_s=med, img_s=batch / med, warmup_s=first_s, loss=loss)
  row["roi_check_max_abs_diff"] = roi_err
  kind = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
  md = [
      f"## PyTorch step ({'tiny' if a.tiny else 'RN50'}, {size} px, {regions} regions + 1 global)",
      "",
      f"{kind}, torch {torch.__version__}; median of {repeats} steps after 2 warm-up steps.",
      "",
      "| variant | batch | warm-up s | step s | images/s | MFU | JAX base / torch | JAX best / torch |",
      "|---|---|---|---|---|---|---|---|",
  ]
  mfu = ratio_base = ratio_best = "n/a"
  if a.jax_json and os.path.exists(a.jax_json):
    rows = json.load(open(a.jax_json))["rows"]
    base = next((r for r in rows if r["variant"] == "base"), rows[0])
    best = max(rows, key=lambda r: r["img_s"])
    flop_img = base["model_tflops"] * 1e12 / base["img_s"]
    mfu = f"{100 * flop_img * row['img_s'] / (base['peak_tflops'] * 1e12):.1f}%"
    ratio_base = f"{base['img_s'] / row['img_s']:.2f}"
    ratio_best = f"{best['img_s'] / row['img_s']:.2f} (`{best['variant']}`)"
  md.append(
      f"| {name} | {batch} | {first_s:.1f} | {med:.4f} | {row['img_s']:.1f} | {mfu} "
      f"| {ratio_base} | {ratio_best} |"
  )
  tag = "_compile" if a.compile else ""
  with open(os.path.join(a.out, f"torch_pretrain{tag}.md"), "w") as f:
    f.write("\n".join(md) + "\n")
  with open(os.path.join(a.out, f"torch_pretrain{tag}.json"), "w") as f:
    json.dump({"device": kind, "row": row, "times": times}, f, indent=1)
  print("\n".join(md))


if __name__ == "__main__":
  main()
