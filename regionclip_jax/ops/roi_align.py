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

The dense product touches the whole map for every RoI although Wy / Wx are zero outside the box.
So RoIs are sorted by how many rows / columns their weights span, and a chunk whose RoIs all fit
a small window (16 or 32 cells, 1/4 or 0.4 of the map, in both axes) contracts a per-RoI crop
instead, and a chunk of RoIs without any nonzero weight (NaN, empty, outside) is skipped
(`lax.switch` on the chunk's largest tier; the crop provably holds every nonzero weight, so it
stays exact). At C4 shapes this halves the forward time; the output is un-permuted at the end.

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
_TIER_FRACTIONS = (0.25, 0.4)  # crop windows for small RoIs (fractions of the map), see below
_TIER_CELLS = (16, 32)  # ... and absolute sizes in cells (large maps such as FPN P2)
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
    y = b0[..., None] + _div((k + 0.5) * bin_size[..., None, None], g)  # [..., out, S]
    valid = (y >= -1.0) & (y <= length)
    yc = jnp.clip(y, 0.0, length - 1)
    w = jnp.maximum(0.0, 1.0 - jnp.abs(yc[..., None] - h))  # [..., out, S, L]
    return jnp.where(valid[..., None], w, 0.0).sum(-2) / g
  g = jnp.ceil(_div(size, out))  # [...], may be <= 0
  g_div = jnp.maximum(g, 1.0)
  spacing = bin_size / g_div
  spacing = jnp.where(spacing > 0, spacing, 1.0)
  # first candidate index: just below the sample nearest to h - 2 (one extra for rounding)
  x = (h - 2.0 - b0[..., None]) / spacing[..., None, None] - 0.5  # [..., out, L]
  k_lo = jnp.clip(jnp.floor(x) - 1.0, -1.0, jnp.maximum(g, 0.0)[..., None, None])
  k = k_lo[..., None] + jnp.arange(_WINDOW, dtype=dtype)  # [..., out, L, J]
  gg = g[..., None, None, None]
  y = b0[..., None, None] + _div(
      (k + 0.5) * bin_size[..., None, None, None], g_div[..., None, None, None]
  )
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


def _support(w):
  """w [N, R, o, L] -> (first nonzero column, number of columns from first to last nonzero) [N, R]."""
  nz = jnp.any(w != 0, axis=-2)
  length = nz.shape[-1]
  first = jnp.argmax(nz, axis=-1)
  last = length - 1 - jnp.argmax(nz[..., ::-1], axis=-1)
  return first.astype(jnp.int32), jnp.where(jnp.any(nz, axis=-1), last - first + 1, 0)


def _tiers(len_a: int, len_b: int) -> list[tuple[int, int]]:
  """Static crop windows (Ka, Kb), nested (each contains the previous), the last = the whole map."""
  cands = [(min(k, len_a), min(k, len_b)) for k in _TIER_CELLS]
  cands += [(max(1, math.ceil(len_a * f)), max(1, math.ceil(len_b * f))) for f in _TIER_FRACTIONS]
  tiers = []
  for ka, kb in sorted(set(cands), key=lambda t: (t[0] * t[1], t)):
    if (ka, kb) == (len_a, len_b) or (ka >= len_a and kb >= len_b):
      continue
    if not tiers or (ka >= tiers[-1][0] and kb >= tiers[-1][1]):
      tiers.append((ka, kb))
  return tiers + [(len_a, len_b)]


def _contract(wa, wb, f, lo=None):
  """wa [N, c, oa, A], wb [N, c, ob, B], f [N, A, B, C] or per RoI [N, c, A, B, C] -> [N, c, oa, ob, C].

  Both contractions are plain matmuls on row-major operands (t = Wa @ F[A, (B C)], then per
  (RoI, bin row) Wb @ t[B, C]); neither they nor their transposes (the backward) need a
  transposed copy of a large intermediate, which on CPU cost as much as the matmuls.
  Operands and result are float32 (float64). `lo` (bfloat16 / float16: the features' own dtype)
  runs both matmuls on an accelerator's matrix units with `lo` operands and float32 accumulation;
  on CPU, whose XLA dot has no BF16 x BF16 = F32 kernel for every shape, they stay float32. The
  gathers and their gradients (scatter-adds) stay in float32 either way.
  """
  if lo is None:
    return _contract_exact(wa, wb, f)
  low = functools.partial(_contract_16bit, lo=lo)
  return lax.platform_dependent(wa, wb, f, cpu=_contract_exact, default=low)


def _broadcast_wb(wa, wb):  # [N, c, ob, B] -> [N, c, oa, ob, B]: one matmul per (RoI, bin row)
  return jnp.broadcast_to(wb[:, :, None], wb.shape[:2] + (wa.shape[2],) + wb.shape[2:])


def _spec(f):
  return "nrpa,nabc->nrpbc" if f.ndim == 4 else "nrpa,nrabc->nrpbc"


def _contract_exact(wa, wb, f):
  t = jnp.einsum(_spec(f), wa, f, precision=_HIGHEST)  # [N, c, oa, B, C]
  return jnp.einsum("nrpqb,nrpbc->nrpqc", _broadcast_wb(wa, wb), t, precision=_HIGHEST)


def _contract_16bit(wa, wb, f, lo):
  acc = f.dtype
  t = jnp.einsum(_spec(f), wa.astype(lo), f.astype(lo), preferred_element_type=acc)
  wb = _broadcast_wb(wa, wb).astype(lo)
  return jnp.einsum("nrpqb,nrpbc->nrpqc", wb, t.astype(lo), preferred_element_type=acc)


def _separable_chunk(feats, wa, wb, first_a, first_b, tier, tiers, lo=None):
  """feats [N, A, B, C]; wa [N, c, oa, A], wb [N, c, ob, B]; first_*, tier [N, c] -> [N, c, oa, ob, C].

  RoIs whose weights fit a smaller window are computed on a per-RoI crop of the map (exact: the
  crop holds every nonzero weight). The caller sorts RoIs by tier, so most chunks of small boxes
  take a cheap branch; `lax.switch` runs only the branch of the chunk's largest tier.
  """
  n_img, len_a, len_b, _ = feats.shape

  def crop(ka, kb):
    def branch(wa, wb, first_a, first_b):
      ia = jnp.clip(first_a, 0, len_a - ka)[..., None] + jnp.arange(ka)  # [N, c, Ka]
      ib = jnp.clip(first_b, 0, len_b - kb)[..., None] + jnp.arange(kb)
      wa_c = jnp.take_along_axis(wa, ia[:, :, None, :], axis=-1)
      wb_c = jnp.take_along_axis(wb, ib[:, :, None, :], axis=-1)
      nidx = jnp.arange(n_img)[:, None, None, None]
      f = feats[nidx, ia[..., :, None], ib[..., None, :]]  # [N, c, Ka, Kb, C]
      return _contract(wa_c, wb_c, f, lo)

    return branch

  full = lambda wa, wb, first_a, first_b: _contract(wa, wb, feats, lo)
  zeros = lambda wa, wb, first_a, first_b: jnp.zeros(
      wa.shape[:3] + wb.shape[2:3] + feats.shape[3:], feats.dtype
  )
  branches = [zeros] + [crop(ka, kb) for ka, kb in tiers[:-1]] + [full]
  return lax.switch(jnp.max(tier), branches, wa, wb, first_a, first_b)


def _gather_chunk(feats, y0, hh, x0, ww, ok, out_hw, sampling_ratio):
  """Sample-by-sample bilinear with corner gathers; memory bounded by one sample at a time."""
  oh, ow = out_hw
  n_img, height, width, channels = feats.shape
  ylo, yhi, wylo, wyhi = _axis_samples(y0, hh, oh, height, sampling_ratio)  # [N, c, oh, Gy]
  xlo, xhi, wxlo, wxhi = _axis_samples(x0, ww, ow, width, sampling_ratio)  # [N, c, ow, Gx]
  okf = ok.astype(wylo.dtype)[..., None, None]
  wylo, wyhi = wylo * okf, wyhi * okf
  gy, gx = ylo.shape[-1], xlo.shape[-1]
  flat = feats.reshape(n_img, height * width, channels)
  nidx = jnp.arange(n_img)[:, None, None, None]

  def corner(yi, xi):
    idx = yi[..., :, None] * width + xi[..., None, :]  # [N, c, oh, ow]
    return flat[nidx, idx]  # [N, c, oh, ow, C]

  def body(s, acc):
    iy, ix = s // gx, s % gx
    a_lo, a_hi = ylo[..., iy], yhi[..., iy]
    b_lo, b_hi = xlo[..., ix], xhi[..., ix]
    u_lo, u_hi = wylo[..., iy, None], wyhi[..., iy, None]  # [N, c, oh, 1]
    v_lo, v_hi = wxlo[..., None, :, ix], wxhi[..., None, :, ix]  # [N, c, 1, ow]
    val = (
        (u_lo * v_lo)[..., None] * corner(a_lo, b_lo)
        + (u_lo * v_hi)[..., None] * corner(a_lo, b_hi)
        + (u_hi * v_lo)[..., None] * corner(a_hi, b_lo)
        + (u_hi * v_hi)[..., None] * corner(a_hi, b_hi)
    )
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
  gather = 4 * sampling_ratio**2 * oh * ow
  return "gather" if gather < separable else "separable"


def roi_align(
    features,
    boxes,
    output_size,
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
    *,
    chunk_size: int = 64,
    method: str = "separable",
):
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
  Returns features.dtype; accumulation in float32 (float64 for float64 features). On an
  accelerator's separable path, bfloat16 / float16 features and the sampling weights enter the
  matmuls as 16-bit operands; otherwise the computation is float32.
  """
  features = jnp.asarray(features)
  boxes = jnp.asarray(boxes)
  if features.ndim != 4:
    raise ValueError(f"{__name__}: features must be [N, H, W, C], got {tuple(features.shape)}")
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(f"{__name__}: boxes must be [N, R, 4], got {tuple(boxes.shape)}")
  if boxes.shape[0] != features.shape[0]:
    raise ValueError(
        f"{__name__}: batch mismatch: features {tuple(features.shape)} vs "
        f"boxes {tuple(boxes.shape)}"
    )
  if method not in ("separable", "gather", "auto"):
    raise ValueError(f"{__name__}: method must be 'separable', 'gather' or 'auto', got {method!r}")
  if sampling_ratio < 0 or chunk_size < 1:
    raise ValueError(
        f"{__name__}: need sampling_ratio >= 0 and chunk_size >= 1, got "
        f"{sampling_ratio}, {chunk_size}"
    )
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
  # bfloat16 / float16 features: the separable matmuls take 16-bit operands on accelerators
  # (float32 accumulation; within 1% of the exact kernel, tests/test_ops_roi_align.py), which made
  # the bf16 RN50 pretraining step 1.19x faster on an H200 (BENCHMARKS.md, "Pretraining step").
  # The map and its crop gathers stay float32, so their gradients are summed in float32.
  lo = features.dtype if features.dtype in (jnp.bfloat16, jnp.float16) else None
  out_hw = (oh, ow)
  swap = method == "separable" and width > height
  if swap:
    # contracting the longer axis first makes the intermediate and the second matmul smaller;
    # one transpose of the map (and of the output) is cheap next to the per-chunk work
    feats = feats.transpose(0, 2, 1, 3)
    y0, hh, x0, ww = x0, ww, y0, hh
    out_hw = (ow, oh)
  if method == "separable":
    wa = _axis_weights(y0, hh, out_hw[0], feats.shape[1], sampling_ratio) * ok[..., None, None]
    wb = _axis_weights(x0, ww, out_hw[1], feats.shape[2], sampling_ratio) * ok[..., None, None]
    first_a, span_a = _support(wa)
    first_b, span_b = _support(wb)
    tiers = _tiers(feats.shape[1], feats.shape[2])
    # 0: no nonzero weight (NaN, empty or outside boxes: output 0); 1 + i: fits crop tier i
    tier = 1 + sum(((span_a > ka) | (span_b > kb)).astype(jnp.int32) for ka, kb in tiers[:-1])
    tier = jnp.where((span_a == 0) | (span_b == 0), 0, tier).astype(jnp.int32)
    order = jnp.argsort(tier, axis=1, stable=True)  # group RoIs of one tier into the same chunks
    per_roi = [
        jnp.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)
        for a in (wa.astype(feats.dtype), wb.astype(feats.dtype), first_a, first_b, tier)
    ]
    chunk = functools.partial(_separable_chunk, tiers=tiers, lo=lo)
  else:
    per_roi = [y0, hh, x0, ww, ok]
    chunk = functools.partial(_gather_chunk, out_hw=out_hw, sampling_ratio=int(sampling_ratio))
  c = min(chunk_size, num_rois)
  n_chunks = -(-num_rois // c)
  if n_chunks == 1:
    out = chunk(feats, *per_roi)
  else:
    pad = n_chunks * c - num_rois

    def split(a):  # [N, R, ...] -> [n_chunks, N, c, ...]
      a = jnp.pad(a, ((0, 0), (0, pad)) + ((0, 0),) * (a.ndim - 2))
      a = a.reshape((n_img, n_chunks, c) + a.shape[2:])
      return jnp.moveaxis(a, 1, 0)

    outs = lax.map(lambda a: chunk(feats, *a), tuple(split(a) for a in per_roi))
    out = outs.transpose(1, 0, 2, 3, 4, 5).reshape((n_img, n_chunks * c) + out_hw + (channels,))
    out = out[:, :num_rois]
  if method == "separable":
    inverse = jnp.argsort(order, axis=1)
    out = jnp.take_along_axis(out, inverse[:, :, None, None, None], axis=1)
  if swap:
    out = out.transpose(0, 1, 3, 2, 4)
  return out.astype(features.dtype)
