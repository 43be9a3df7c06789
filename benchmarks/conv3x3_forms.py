"""3x3 convolution forward on the CPU: XLA's convolution and three matmul forms against PyTorch.

  python benchmarks/conv3x3_forms.py --batch 8 --repeats 7

The shapes are the stride-1 3x3 convolutions of CLIP's RN50 image tower at 224 px (stem,
layer1-4; each block's first conv at the map size before its average-pool stride). Each form is
jitted, checked against `lax.conv_general_dilated` (max |difference| / max |output|) and timed
interleaved with `torch.nn.functional.conv2d` (oneDNN) on the same input, median of `repeats`.
Forms:
  xla: `lax.conv_general_dilated`, NHWC / HWIO (what `layers.conv2d` runs);
  im2col: the nine shifted windows concatenated on channels, one [P, 9 Cin] x [9 Cin, Cout] matmul;
  shift9: nine [P, Cin] x [Cin, Cout] matmuls of the shifted windows, summed;
  winograd: F(2x2, 3x3) (Lavin & Gray 2016): 16 batched [P / 4, Cin] x [Cin, Cout] matmuls between
    fixed 4x4 input and 2x2 output transforms, 2.25x fewer multiplies.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from interleaved import interleaved_medians

_NHWC = ("NHWC", "HWIO", "NHWC")
# (H = W, Cin, Cout, how many times RN50 runs it)
RN50_SHAPES = (
    (112, 32, 32, 1),
    (112, 32, 64, 1),
    (56, 64, 64, 3),
    (56, 128, 128, 1),
    (28, 128, 128, 3),
    (28, 256, 256, 1),
    (14, 256, 256, 5),
    (14, 512, 512, 1),
    (7, 512, 512, 2),
)
# Winograd F(2x2, 3x3) kernel transform G [4, 3]; the input and output transforms are written
# out in `_input_transform` / `_output_transform` (their matrices are 0 / +-1).
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)


def xla_conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=_NHWC)


def _windows(x):
  """x: [N, H, W, C] -> the nine SAME-padded shifted views, each [N, H, W, C]."""
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)]


def im2col(x, k):
  n, h, w, c = x.shape
  cols = jnp.concatenate(_windows(x), axis=-1).reshape(-1, 9 * c)
  return (cols @ k.reshape(9 * c, -1)).reshape(n, h, w, -1)


def shift9(x, k):
  kernels = k.reshape(9, *k.shape[2:])
  return sum(jnp.einsum("nhwc,cd->nhwd", v, kernels[t]) for t, v in enumerate(_windows(x)))


def _input_transform(x, axis, tiles):
  """B^T d along `axis` for tiles of 4 taps at stride 2: [..., 2 tiles + 2, ...] -> [4, ..., tiles, ...]."""
  d0, d1, d2, d3 = (jax.lax.slice_in_dim(x, r, r + 2 * tiles - 1, 2, axis) for r in range(4))
  return jnp.stack([d0 - d2, d1 + d2, d2 - d1, d1 - d3])


def _output_transform(m, axis):
  """A^T m along `axis` (length 4) -> length 2."""
  m0, m1, m2, m3 = (jnp.take(m, t, axis=axis) for t in range(4))
  return jnp.stack([m0 + m1 + m2, m1 - m2 - m3], axis=axis)


def winograd(x, k):
  n, h, w, _ = x.shape
  th, tw = (h + 1) // 2, (w + 1) // 2  # odd maps (7 x 7) are padded to even, then cropped
  xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
  v = _input_transform(_input_transform(xp, 1, th), 3, tw)  # [4 (w), 4 (h), N, th, tw, Cin]
  u = jnp.einsum("ai,ijcd,bj->bacd", _G, k, _G)  # [4 (w), 4 (h), Cin, Cout]
  m = jnp.einsum("banhwc,bacd->banhwd", v, u)
  y = _output_transform(_output_transform(m, 0), 1)  # [2 (w), 2 (h), N, th, tw, Cout]
  y = jnp.transpose(y, (2, 3, 1, 4, 0, 5)).reshape(n, 2 * th, 2 * tw, -1)
  return y[:, :h, :w]


FORMS = {"xla": xla_conv, "im2col": im2col, "shift9": shift9, "winograd": winograd}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=7)
  args = ap.parse_args()
  import torch

  torch.set_grad_enabled(False)
  rng = np.random.default_rng(0)
  jitted = {name: jax.jit(f) for name, f in FORMS.items()}
  names = ["torch", *FORMS]
  totals = dict.fromkeys(names, 0.0)
  print(f"batch {args.batch}; ms (x torch's time); max rel. difference to xla in brackets")
  print("| H x W, Cin -> Cout (x uses) | " + " | ".join(names) + " |")
  print("|---" * (len(names) + 1) + "|")
  for size, cin, cout, uses in RN50_SHAPES:
    x = rng.normal(size=(args.batch, size, size, cin)).astype(np.float32)
    k = (rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    xj, kj = jnp.asarray(x), jnp.asarray(k)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    kt = torch.from_numpy(k).permute(3, 2, 0, 1).contiguous()
    ref = np.asarray(jitted["xla"](xj, kj))
    calls = {"torch": lambda: torch.nn.functional.conv2d(xt, kt, padding=1)}
    err = {}
    for name, f in jitted.items():
      err[name] = float(np.abs(np.asarray(f(xj, kj)) - ref).max() / np.abs(ref).max())
      calls[name] = lambda f=f: jax.block_until_ready(f(xj, kj))
    med = interleaved_medians(calls, args.repeats)
    for name in names:
      totals[name] += uses * med[name]
    cells = [f"{med['torch'] * 1e3:.1f}"] + [
        f"{med[n] * 1e3:.1f} ({med[n] / med['torch']:.2f}x) [{err[n]:.0e}]" for n in FORMS
    ]
    print(f"| {size} x {size}, {cin} -> {cout} (x{uses}) | " + " | ".join(cells) + " |", flush=True)
  cells = [f"{totals['torch'] * 1e3:.0f}"] + [
      f"{totals[n] * 1e3:.0f} ({totals[n] / totals['torch']:.2f}x)" for n in FORMS
  ]
  print("| RN50 sum, weighted by uses | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
