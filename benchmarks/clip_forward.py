"""CLIP tower timings: Flax (fp32 / bf16 compute) vs OpenAI's PyTorch `model.py`, side by side.

  python benchmarks/clip_forward.py --preset RN50 --batch 8 --text_batch 32 --repeats 5

Reports the median of `repeats` timed calls after one warm-up (compile) call, and ratios
Flax / torch. The text forward twice: all 77 columns, and cut after the last EOT as
`LoadedCLIP.encode_text` does (torch keeps its 77). Also the res4 trunk forward + backward
(random cotangent) with freeze_at 0 vs 2, and with `--unfolded_pool` the image forward with the
attention pool before its key / value fold. Variants are timed interleaved (one call of each per
round), so load from other processes on a shared machine hits all of them alike and the ratios
stay meaningful.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from interleaved import interleaved_medians
from regionclip_jax.models import clip
from regionclip_jax.models.text import trim_to_eot


def _torch_model(cfg):
  import torch

  spec = importlib.util.find_spec("clip")
  path = os.path.join(next(iter(spec.submodule_search_locations)), "model.py")
  mspec = importlib.util.spec_from_file_location("_openai_clip_model", path)
  mod = importlib.util.module_from_spec(mspec)
  mspec.loader.exec_module(mod)
  v, t = cfg.vision, cfg.text
  layers = tuple(v.layers) if cfg.is_resnet else v.layers
  patch = None if cfg.is_resnet else v.patch_size
  torch.manual_seed(0)
  return mod.CLIP(
      cfg.embed_dim,
      v.image_size,
      layers,
      v.width,
      patch,
      t.context_length,
      t.vocab_size,
      t.width,
      t.heads,
      t.layers,
  ).eval()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="RN50")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--text_batch", type=int, default=32)
  ap.add_argument("--trunk_batch", type=int, default=4)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--no_torch", action="store_true")
  ap.add_argument(
      "--unfolded_pool",
      action="store_true",
      help="add an image-forward row with the attention pool unfolded (fold_attention_pool="
      "False: keys and values of every token, OpenAI's form), and region-head rows folded / "
      "unfolded",
  )
  ap.add_argument("--region_crops", type=int, default=32, help="crops for the region-head rows")
  ap.add_argument(
      "--conv_kernel_grad",
      default="auto",
      choices=("auto", "xla", "per_sample"),
      help="3x3 kernel-gradient form of the Flax trunk (models.layers.conv2d; the model's "
      "default is 'xla', bit-identical to autodiff)",
  )
  args = ap.parse_args()
  cfg = clip.get_config(args.preset)
  if args.unfolded_pool and not (cfg.is_resnet and cfg.vision.fold_attention_pool):
    ap.error(f"--unfolded_pool: preset {args.preset} has no folded attention pool to compare")
  params = clip.init_params(cfg)
  s = cfg.image_size
  rng = np.random.default_rng(0)
  images = rng.normal(size=(args.batch, s, s, 3)).astype(np.float32)
  tokens = clip.LoadedCLIP(cfg, params).tokenize(
      ["a photo of a red circle next to a star"] * args.text_batch
  )
  rows = []

  def flax_fn(method, x, dtype):
    f = jax.jit(lambda p, a: clip.CLIP(cfg, dtype=dtype).apply({"params": p}, a, method=method))
    xj = jnp.asarray(x)
    return lambda: jax.block_until_ready(f(params, xj))

  fns = {
      "img32": flax_fn(clip.CLIP.encode_image, images, jnp.float32),
      "img16": flax_fn(clip.CLIP.encode_image, images, jnp.bfloat16),
      "txt32": flax_fn(clip.CLIP.encode_text, tokens, jnp.float32),
      "txt16": flax_fn(clip.CLIP.encode_text, tokens, jnp.bfloat16),
      # what LoadedCLIP.encode_text runs: the columns after the last EOT cut (OpenAI's model.py
      # cannot take fewer than its 77, so torch keeps them)
      "txt32_cut": flax_fn(clip.CLIP.encode_text, trim_to_eot(tokens), jnp.float32),
      "txt16_cut": flax_fn(clip.CLIP.encode_text, trim_to_eot(tokens), jnp.bfloat16),
  }
  if args.unfolded_pool:
    # The attention pool as OpenAI computes it, beside the folded default: whole images, and the
    # region head (layer4 + attnpool) on RoIAlign-sized crops [M, 2 g, 2 g, C4], g = pool grid.
    ucfg = dataclasses.replace(
        cfg, vision=dataclasses.replace(cfg.vision, fold_attention_pool=False)
    )
    side = 2 * cfg.vision.pool_grid
    crops = rng.normal(size=(args.region_crops, side, side, cfg.vision.res4_channels))
    crops = jnp.asarray(crops.astype(np.float32))
    for tag, c in (("", cfg), ("_unfolded", ucfg)):
      for name, method, x in (
          ("img32", clip.CLIP.encode_image, jnp.asarray(images)),
          ("head32", clip.CLIP.image_region_head, crops),
      ):
        if name + tag in fns:
          continue
        f = jax.jit(
            lambda p, a, c=c, method=method: clip.CLIP(c).apply({"params": p}, a, method=method)
        )
        fns[name + tag] = lambda f=f, x=x: jax.block_until_ready(f(params, x))
  if not args.no_torch:
    import torch

    model = _torch_model(cfg)
    ti = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    tt = torch.from_numpy(tokens.astype(np.int64))

    def no_grad(f):
      def g():
        with torch.no_grad():
          f()

      return g

    fns["timg"] = no_grad(lambda: model.encode_image(ti))
    fns["ttxt"] = no_grad(lambda: model.encode_text(tt))
    if cfg.is_resnet:
      vis = model.visual
      ti_trunk = ti[: args.trunk_batch].clone()
      tcot = torch.from_numpy(
          rng.normal(size=(args.trunk_batch, cfg.vision.res4_channels, s // 16, s // 16)).astype(
              np.float32
          )
      )

      def torch_trunk():
        x = vis.relu1(vis.bn1(vis.conv1(ti_trunk)))
        x = vis.relu2(vis.bn2(vis.conv2(x)))
        x = vis.avgpool(vis.relu3(vis.bn3(vis.conv3(x))))
        x = vis.layer3(vis.layer2(vis.layer1(x)))
        grads = torch.autograd.grad(
            x, [q for q in vis.parameters() if q.requires_grad], tcot, allow_unused=True
        )
        return grads

      fns["ttrunk"] = torch_trunk
  if cfg.is_resnet:
    trunk_images = jnp.asarray(images[: args.trunk_batch])
    cot_shape = (args.trunk_batch, s // 16, s // 16, cfg.vision.res4_channels)
    cot = jnp.asarray(rng.normal(size=cot_shape).astype(np.float32))
    # Gradients wrt the trunk's parameters only, as torch's autograd.grad above (layer4 and
    # attnpool give None there): differentiating the whole tree would also zero-fill the
    # gradients of the ~100M text / layer4 / attnpool parameters, a cost torch does not pay.
    trunk_keys = [k for k in params["visual"] if k not in ("layer4", "attnpool")]

    for freeze_at in (0, 2):

      def fwd_bwd(p, x, freeze_at=freeze_at):
        def res4(trunk):
          q = {**p, "visual": {**p["visual"], **trunk}}
          return clip.CLIP(cfg, freeze_at=freeze_at, conv_kernel_grad=args.conv_kernel_grad).apply(
              {"params": q}, x, method=clip.CLIP.image_res4
          )

        _, vjp = jax.vjp(res4, {k: p["visual"][k] for k in trunk_keys})
        return vjp(cot)[0]

      f = jax.jit(fwd_bwd)
      fns[f"trunk{freeze_at}"] = lambda f=f: jax.block_until_ready(f(params, trunk_images))
  t = interleaved_medians(fns, args.repeats)
  nan = float("nan")
  rows.append(
      (f"image forward, batch {args.batch}, {s} px", t.get("timg", nan), t["img32"], t["img16"])
  )
  if "img32_unfolded" in t:
    rows.append(
        ("image forward, attention pool unfolded", t.get("timg", nan), t["img32_unfolded"], nan)
    )
    rows.append(
        (
            f"region head, {args.region_crops} crops: folded / unfolded attention pool (fp32)",
            nan,
            t["head32"],
            t["head32_unfolded"],
        )
    )
  rows.append(
      (f"text forward, batch {args.text_batch}", t.get("ttxt", nan), t["txt32"], t["txt16"])
  )
  rows.append(
      (
          f"text forward, batch {args.text_batch}, {trim_to_eot(tokens).shape[1]} of "
          f"{tokens.shape[1]} columns (LoadedCLIP.encode_text; torch at {tokens.shape[1]})",
          t.get("ttxt", nan),
          t["txt32_cut"],
          t["txt16_cut"],
      )
  )
  if cfg.is_resnet:
    rows.append(
        (
            f"res4 trunk fwd+bwd, batch {args.trunk_batch}: freeze_at 0 / freeze_at 2 (fp32)",
            t.get("ttrunk", nan),
            t["trunk0"],
            t["trunk2"],
        )
    )

  print(
      f"| what ({args.preset}) | torch | flax fp32 | flax bf16 (trunk: freeze_at 2) | fp32 / torch |"
  )
  print("|---|---|---|---|---|")
  for name, t, a, b in rows:
    print(f"| {name} | {t:.3f} s | {a:.3f} s | {b:.3f} s | {a / t:.2f} |")


if __name__ == "__main__":
  main()
