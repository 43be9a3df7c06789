"""Checkpoint reading: our readers vs the libraries' own, side by side, on a full-size random CLIP.

  python benchmarks/checkpoint_io.py --arch RN50 --repeats 3

Writes the same OpenAI-architecture weights (clip-anytorch `model.py`, random init) as a
TorchScript archive (OpenAI's release format), a plain `torch.save` state dict, a safetensors
file and our converted directory, then times, interleaved (one call of each per round, median
of `repeats`):
  - TorchScript: our allow-list unpickler (`read_torchscript_archive`, no code run) vs
    `torch.jit.load(...).state_dict()`;
  - state dict: `torch.load(weights_only=True)` through `read_torch_file`;
  - safetensors: our memory-mapped parser vs `safetensors.numpy.load_file`;
  - converted directory: `read_converted` (the no-PyTorch path of `clip.load`);
  - full `checkpoints.load` (read + rename + Flax tree, no jit) from the archive.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile

import numpy as np
import safetensors.numpy
import torch
from interleaved import interleaved_medians

from regionclip_jax.models import checkpoints as ck


def _model_py():
  spec = importlib.util.find_spec("clip")
  path = os.path.join(next(iter(spec.submodule_search_locations)), "model.py")
  mspec = importlib.util.spec_from_file_location("_openai_clip_model_bench", path)
  mod = importlib.util.module_from_spec(mspec)
  mspec.loader.exec_module(mod)
  return mod


def _build(arch: str):
  m = _model_py()
  torch.manual_seed(0)
  if arch == "RN50":
    vision = {
        "embed_dim": 1024,
        "image_resolution": 224,
        "vision_layers": (3, 4, 6, 3),
        "vision_width": 64,
        "vision_patch_size": None,
    }
  else:
    vision = {
        "embed_dim": 512,
        "image_resolution": 224,
        "vision_layers": 12,
        "vision_width": 768,
        "vision_patch_size": 32,
    }
  return m.CLIP(
      **vision,
      context_length=77,
      vocab_size=49408,
      transformer_width=512,
      transformer_heads=8,
      transformer_layers=12,
  ).eval()


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="RN50", choices=("RN50", "ViT-B/32"))
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  model = _build(args.arch)
  with tempfile.TemporaryDirectory() as tmp:
    archive = os.path.join(tmp, "model.pt")
    torch.jit.trace(
        model,
        (torch.zeros(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)),
        check_trace=False,
    ).save(archive)
    plain = os.path.join(tmp, "state_dict.pt")
    torch.save(model.state_dict(), plain)
    st = os.path.join(tmp, "model.safetensors")
    safetensors.numpy.save_file({k: v.numpy() for k, v in model.state_dict().items()}, st)
    conv = os.path.join(tmp, "converted")
    loaded = ck.load(archive)
    ck.save_converted(conv, loaded.config, loaded.params, source="openai")
    size_mb = os.path.getsize(st) / 2**20

    fns = {
        "torchscript: ours (allow-list unpickler)": lambda: ck.read_torchscript_archive(archive),
        "torchscript: torch.jit.load().state_dict()": lambda: {
            k: v.numpy()
            for k, v in torch.jit.load(archive, map_location="cpu").state_dict().items()
        },
        "state dict: torch.load(weights_only=True)": lambda: ck.read_torch_file(plain),
        "safetensors: ours (mmap)": lambda: ck.read_safetensors(st),
        "safetensors: safetensors.numpy.load_file": lambda: safetensors.numpy.load_file(st),
        "converted dir: read_converted": lambda: ck.read_converted(conv),
        "checkpoints.load(archive), no jit": lambda: ck.load(archive),
    }
    med = interleaved_medians(fns, args.repeats)
  base = med["torchscript: torch.jit.load().state_dict()"]
  print(f"{args.arch}: {size_mb:.0f} MiB of fp32 weights, median of {args.repeats}")
  print("| reader | seconds | / torch.jit.load |")
  print("|---|---|---|")
  for k, v in med.items():
    print(f"| {k} | {v:.3f} | {v / base:.2f} |")
  assert np.isfinite(base)


if __name__ == "__main__":
  main()
