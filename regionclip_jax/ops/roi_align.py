"""RoIAlign with exact torchvision / detectron2 (ROIAlignV2) semantics and static shapes.

Per RoI and output bin, torchvision averages `gh x gw` bilinear samples; a sample whose y lies
outside [-1, H] (or x outside [-1, W]) contributes 0, otherwise its coordinates are clamped to
[0, H-1] x [0, W-1]. Both the validity test and the bilinear weights factor into a y part and an x
part, so every RoI reduces to two small weight matrices and

    out[r] = Wy[r] @ F @ Wx[r]^T,    Wy [oh, H], Wx [ow, W]   (per channel)

where `Wy[p, h]` sums the y-tent weights of bin p's samples on row h, divided by gh. That is the
"separable" method (the default: faster on CPU and dense matmuls on accelerators). The "gather"
method evaluates the samples one by one with four corner gathers (kept for comparison).

Adaptive sampling (`sampling_ratio=0`) uses gh = ceil(roi_h / oh) samples per bin, which is data
dependent and unbounded (boxes may be larger than the map). The separable method stays exact with
a static cost: when gh >= 2 the sample spacing exceeds 1/2, so at most 8 samples fall within
[h-2, h+2], the only ones that can touch row h; for each (bin, row) a window of 11 sample indices
starting just below that interval (located in closed form) covers them, and each candidate is
re-evaluated with the kernel's own arithmetic and validity test. The divisor stays the true gh.

Edge cases (all documented behaviour, tested in tests/test_ops_roi_align.py):
- x2 < x1 or y2 < y1: exactly torchvision. aligned=True + adaptive: zero output (gh <= 0);
  aligned=False: the size is floored at 1; sampling_ratio > 0 with aligned=True: the samples walk
  backwards from x1, as in torchvision.
- NaN / inf coordinates: that RoI's output is 0 and it sends zero gradient to the features.
- R == 0: returns an empty [N, 0, oh, ow, C] array.
- Shape problems (rank, last dim != 4, batch mismatch): ValueError at trace time.
- Coordinates are float32 (float64 features: float64); |coordinate * spatial_scale| beyond ~2^22
  loses the kernel's integer sample indexing precision (torchvision overflows there too).
- method="gather" with adaptive sampling is exact only when every RoI's grid fits
  ceil(H/oh) x ceil(W/ow), which holds for boxes inside the image; with sampling_ratio > 0 it is
  exact for every box and is the cheaper choice on large maps ("auto" picks it then).
Gradients flow to `features` only (boxes are stop_gradient'ed, like torchvision's backward).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence, Union

import jax.numpy as jnp
from jax import lax

_WINDOW = 11  # candidate samples per (bin, row) in the adaptive separable path; see module doc
_HIGHEST = lax.Precision.HIGHEST  # keep fp32 exact on GPU/TPU (TF32 / bf16 passes otherwise)


def _pair(output_size: Union[int, Sequence[int]]) -> tuple[int, int]:
  if isinstance(output_size, int):
    return output_size, output_size
  oh, ow = output_size
  return int(oh), int(ow)


def _div(a, b):
  """a / b, computed as a true division like the C++ kernel.

  XLA rewrites `x / broadcast(y)` into `x * broadcast(1 / y)`, which moves samples by an ulp and
  flips `ceil` and the [-1, H] validity test at exact boundaries (e.g. a 21-cell box in 7 bins);
  the barrier hides the broadcast from that rewrite.
  """
  a = jnp.asarray(a)
  b = jnp.asarray(b, a.dtype)
  shape = jnp.broadcast_shapes(a.shape, b.shape)
  return jnp.broadcast_to(a, shape) / lax.optimization_barrier(jnp.broadcast_to(b, shape))


def _bins(start, size, out: int):
  """Per-axis bin geometry. start, size [...] -> (bin start b0 [..., out], bin size [...])."""
  bin_size = _div(size, out)
  p = jnp.arange(out, dtype=start.dtype)
  return start[..., None] + p * bin_size[..., None], bin_size


def _axis_weights(start, size, out: int, length: int, sampling_ratio: int):
  """Separable weights for one axis: start, size [...] -> W [..., out, length] (sample mean folded in)."""
  dtype = start.dtype
  b0, bin_size = _bins(start, size, out)
  h = jnp.arange(length, dtype=dtype)
  if sampling_ratio > 0:
    g = jnp.asarray(sampling_ratio, dtype)
    k = jnp.arange(sampling_ratio, dtype=dtype)
    y = b0[..., None] + _div((k + 0.5) * bin_size[..., None, None], g)   # [..., out, S]
    valid = (y >= -1.0) & (y <= length)
    yc = jnp.clip(y, 0.0, length - 1)
    w = jnp.maximum(0.0, 1.0 - jnp.abs(yc[..., None] - h))              # [..., out, S, L]
    return jnp.where(valid[..., None], w, 0.0).sum(-2) / g
  g = jnp.ceil(_div(size, out))                                          # [...], may be <= 0
  g_div = jnp.maximum(g, 1.0)
  spacing = bin_size / g_div
  spacing = jnp.where(spacing > 0, spacing, 1.0)
  # first candidate index: just below the sample nearest to h - 2 (one extra for rounding)
  x = (h - 2.0 - b0[..., None]) / spacing[..., None, None] - 0.5        # [..., out, L]
  k_lo = jnp.clip(jnp.floor(x) - 1.0, -1.0, jnp.maximum(g, 0.0)[..., None, None])
  k = k_lo[..., None] + jnp.arange(_WINDOW, dtype=dtype)                 # [..., out, L, J]
  gg = g[..., None, None, None]
  y = b0[..., None, None] + _div((k + 0.5) * bin_size[..., None, None, None],
                                 g_div[..., None, None, None])
  valid = (k >= 0) & (k < gg) & (y >= -1.0) & (y <= length)
  yc = jnp.clip(y, 0.0, length - 1)
  w = jnp.maximum(0.0, 1.0 - jnp.abs(yc - h[:, None]))
  return jnp.where(valid, w, 0.0).sum(-1) / g_div[..., None, None]


def _axis_samples(start, size, out: int, length: int, sampling_ratio: int):
  """Sample-wise geometry for the gather method: -> (low, high int32, w_low, w_high) [..., out, G]."""
  dtype = start.dtype
  b0, bin_size = _bins(start, size, out)
  if sampling_ratio > 0:
    n = sampling_ratio
    g = jnp.full(size.shape, sampling_ratio, dtype)
  else:
    n = max(1, math.ceil(length / out))  # exact for boxes inside the image (module doc)
    g = jnp.ceil(_div(size, out))
  g_div = jnp.maximum(g, 1.0)[..., None, None]
  k = jnp.arange(n, dtype=dtype)
  y = b0[..., None] + _div((k + 0.5) * bin_size[..., None, None], g_div)
  valid = (k < g[..., None, None]) & (y >= -1.0) & (y <= length)
  yc = jnp.clip(y, 0.0, length - 1)
  low = jnp.floor(yc)
  high = jnp.minimum(low + 1.0, length - 1)
  frac = yc - low
  scale = jnp.where(valid, 1.0 / g_div, 0.0)
  return low.astype(jnp.int32), high.astype(jnp.int32), (1.0 - frac) * scale, frac * scale


def _separable_chunk(feats, y0, hh, x0, ww, ok, out_hw, sampling_ratio):
  """feats [N, A, B, C] (A = the axis contracted first); y0, hh / x0, ww: geometry along A / B;
  ok [N, c] -> [N, c, oa, ob, C].

  Both contractions are laid out as plain matmuls on row-major operands: t = Wa @ F[A, (B C)],
  then per (RoI, bin row) Wb @ t[B, C]. Neither the forward nor its transpose (the backward)
  needs a transposed copy of a large intermediate, which on CPU cost ~2x the matmuls.
  """
  oa, ob = out_hw
  _, len_a, len_b, _ = feats.shape
  wa = (_axis_weights(y0, hh, oa, len_a, sampling_ratio) * ok[..., None, None]).astype(feats.dtype)
  wb = (_axis_weights(x0, ww, ob, len_b, sampling_ratio) * ok[..., None, None]).astype(feats.dtype)
  t = jnp.einsum("nrpa,nabc->nrpbc", wa, feats, precision=_HIGHEST)           # [N, c, oa, B, C]
  wb = jnp.broadcast_to(wb[:, :, None], wb.shape[:2] + (oa,) + wb.shape[2:])  # [N, c, oa, ob, B]
  return jnp.einsum("nrpqb,nrpbc->nrpqc", wb, t, precision=_HIGHEST)


def _gather_chunk(feats, y0, hh, x0, ww, ok, out_hw, sampling_ratio):
  """Sample-by-sample bilinear with corner gathers; memory bounded by one sample at a time."""
  oh, ow = out_hw
  n_img, height, width, channels = feats.shape
  ylo, yhi, wylo, wyhi = _axis_samples(y0, hh, oh, height, sampling_ratio)   # [N, c, oh, Gy]
  xlo, xhi, wxlo, wxhi = _axis_samples(x0, ww, ow, width, sampling_ratio)    # [N, c, ow, Gx]
  okf = ok.astype(wylo.dtype)[..., None, None]
  wylo, wyhi = wylo * okf, wyhi * okf
  gy, gx = ylo.shape[-1], xlo.shape[-1]
  flat = feats.reshape(n_img, height * width, channels)
  nidx = jnp.arange(n_img)[:, None, None, None]

  def corner(yi, xi):
    idx = yi[..., :, None] * width + xi[..., None, :]                       # [N, c, oh, ow]
    return flat[nidx, idx]                                                  # [N, c, oh, ow, C]

  def body(s, acc):
    iy, ix = s // gx, s % gx
    a_lo, a_hi = ylo[..., iy], yhi[..., iy]
    b_lo, b_hi = xlo[..., ix], xhi[..., ix]
    u_lo, u_hi = wylo[..., iy, None], wyhi[..., iy, None]                   # [N, c, oh, 1]
    v_lo, v_hi = wxlo[..., None, :, ix], wxhi[..., None, :, ix]             # [N, c, 1, ow]
    val = ((u_lo * v_lo)[..., None] * corner(a_lo, b_lo)
           + (u_lo * v_hi)[..., None] * corner(a_lo, b_hi)
           + (u_hi * v_lo)[..., None] * corner(a_hi, b_lo)
           + (u_hi * v_hi)[..., None] * corner(a_hi, b_hi))
    return acc + val.astype(acc.dtype)

  acc = jnp.zeros(ok.shape + (oh, ow, channels), feats.dtype)
  return lax.fori_loop(0, gy * gx, body, acc)


def _auto_method(height: int, width: int, oh: int, ow: int, sampling_ratio: int) -> str:
  """Cheaper exact method by multiply-adds per RoI and channel.

  Adaptive sampling always takes "separable" (the only one exact for every box). With a fixed
  sampling_ratio both are exact; the gather costs 4 * sr^2 per bin, the separable form a dense
  pass over the map, so gather wins on large maps with small outputs (FPN P2 at 7x7).
  """
  if sampling_ratio == 0:
    return "separable"
  long_, short = max(height, width), min(height, width)
  o_long, o_short = (oh, ow) if height >= width else (ow, oh)
  separable = o_long * long_ * short + o_long * o_short * short
  gather = 4 * sampling_ratio ** 2 * oh * ow
  return "gather" if gather < separable else "separable"


def roi_align(features, boxes, output_size, spatial_scale: float, sampling_ratio: int = 0,
              aligned: bool = True, *, chunk_size: int = 64, method: str = "separable"):
  """RoIAlign: features [N, H, W, C], boxes [N, R, 4] (x1, y1, x2, y2, image px) -> [N, R, oh, ow, C].

  Args:
    output_size: int or (oh, ow).
    spatial_scale: feature / image size ratio (1/16 for res4).
    sampling_ratio: samples per bin per axis; 0 = adaptive ceil(roi_size / output_size).
    aligned: True = detectron2 ROIAlignV2 (-0.5 pixel shift); False = legacy (sizes floored at 1).
    chunk_size: RoIs per image processed at once (bounds temporary memory; `lax.map` over chunks).
    method: "separable" (default, exact for every box), "gather" (exact for every box when
      sampling_ratio > 0, otherwise only for boxes inside the image; see module doc) or "auto"
      (separable for adaptive sampling, else whichever needs fewer multiply-adds).
  Returns features.dtype; accumulation in float32 (float64 for float64 features).
  """
  features = jnp.asarray(features)
  boxes = jnp.asarray(boxes)
  if features.ndim != 4:
    raise ValueError(f"ops/roi_align.py: features must be [N, H, W, C], got {tuple(features.shape)}")
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(f"ops/roi_align.py: boxes must be [N, R, 4], got {tuple(boxes.shape)}")
  if boxes.shape[0] != features.shape[0]:
    raise ValueError(f"ops/roi_align.py: batch mismatch: features {tuple(features.shape)} vs "
                     f"boxes {tuple(boxes.shape)}")
  if method not in ("separable", "gather", "auto"):
    raise ValueError(f"ops/roi_align.py: method must be 'separable', 'gather' or 'auto', got {method!r}")
  if sampling_ratio < 0 or chunk_size < 1:
    raise ValueError(f"ops/roi_align.py: need sampling_ratio >= 0 and chunk_size >= 1, got "
                     f"{sampling_ratio}, {chunk_size}")
  oh, ow = _pair(output_size)
  n_img, height, width, channels = features.shape
  num_rois = boxes.shape[1]
  if num_rois == 0 or height == 0 or width == 0:
    return jnp.zeros((n_img, num_rois, oh, ow, channels), features.dtype)

  if method == "auto":
    method = _auto_method(height, width, oh, ow, sampling_ratio)
  geo = jnp.float64 if features.dtype == jnp.float64 else jnp.float32
  boxes = lax.stop_gradient(boxes.astype(geo))
  ok = jnp.all(jnp.isfinite(boxes), axis=-1)
  boxes = jnp.where(ok[..., None], boxes, 0.0)
  offset = 0.5 if aligned else 0.0
  x0 = boxes[..., 0] * spatial_scale - offset
  y0 = boxes[..., 1] * spatial_scale - offset
  ww = boxes[..., 2] * spatial_scale - offset - x0
  hh = boxes[..., 3] * spatial_scale - offset - y0
  if not aligned:
    ww = jnp.maximum(ww, 1.0)
    hh = jnp.maximum(hh, 1.0)

  feats = features.astype(jnp.promote_types(features.dtype, jnp.float32))
  out_hw = (oh, ow)
  swap = method == "separable" and width > height
  if swap:
    # contracting the longer axis first makes the intermediate and the second matmul smaller;
    # one transpose of the map (and of the output) is cheap next to the per-chunk work
    feats = feats.transpose(0, 2, 1, 3)
    y0, hh, x0, ww = x0, ww, y0, hh
    out_hw = (ow, oh)
  chunk = functools.partial(_separable_chunk if method == "separable" else _gather_chunk,
                            out_hw=out_hw, sampling_ratio=int(sampling_ratio))
  c = min(chunk_size, num_rois)
  n_chunks = -(-num_rois // c)
  if n_chunks == 1:
    out = chunk(feats, y0, hh, x0, ww, ok)
  else:
    pad = n_chunks * c - num_rois

    def split(a):  # [N, R] -> [n_chunks, N, c]
      a = jnp.pad(a, ((0, 0), (0, pad)))
      return a.reshape(n_img, n_chunks, c).transpose(1, 0, 2)

    outs = lax.map(lambda a: chunk(feats, *a), tuple(split(a) for a in (y0, hh, x0, ww, ok)))
    out = outs.transpose(1, 0, 2, 3, 4, 5).reshape((n_img, n_chunks * c) + out_hw + (channels,))
    out = out[:, :num_rois]
  if swap:
    out = out.transpose(0, 1, 3, 2, 4)
  return out.astype(features.dtype)
