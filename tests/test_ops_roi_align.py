"""RoIAlign against a slow numpy port of torchvision's CPU kernel (roi_align_kernel.cpp)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from regionclip_jax.ops.roi_align import _auto_method, roi_align

F32 = np.float32


def _bilinear(f, y, x):
  """torchvision bilinear_interpolate, float32 geometry as in the kernel with T = float."""
  height, width = f.shape[:2]
  if y < -1.0 or y > height or x < -1.0 or x > width:
    return np.zeros(f.shape[-1])
  y = F32(0) if y <= 0 else y
  x = F32(0) if x <= 0 else x
  y_low, x_low = int(y), int(x)
  if y_low >= height - 1:
    y_high = y_low = height - 1
    y = F32(y_low)
  else:
    y_high = y_low + 1
  if x_low >= width - 1:
    x_high = x_low = width - 1
    x = F32(x_low)
  else:
    x_high = x_low + 1
  ly, lx = F32(y - F32(y_low)), F32(x - F32(x_low))
  hy, hx = F32(1) - ly, F32(1) - lx
  f = f.astype(np.float64)
  return (
      hy * hx * f[y_low, x_low]
      + hy * lx * f[y_low, x_high]
      + ly * hx * f[y_high, x_low]
      + ly * lx * f[y_high, x_high]
  )


def ref_roi_align(feats, boxes, out_hw, scale, sampling_ratio, aligned):
  """feats [N, H, W, C], boxes [N, R, 4] -> [N, R, oh, ow, C] float64, loop for loop like the kernel."""
  oh, ow = out_hw
  n_img, _, _, ch = feats.shape
  out = np.zeros((n_img, boxes.shape[1], oh, ow, ch))
  offset = F32(0.5) if aligned else F32(0.0)
  for n in range(n_img):
    for r in range(boxes.shape[1]):
      x1, y1, x2, y2 = (F32(v) for v in boxes[n, r])
      sx, sy = x1 * F32(scale) - offset, y1 * F32(scale) - offset
      ex, ey = x2 * F32(scale) - offset, y2 * F32(scale) - offset
      rw, rh = F32(ex - sx), F32(ey - sy)
      if not aligned:
        rw, rh = max(rw, F32(1)), max(rh, F32(1))
      bh, bw = F32(rh / F32(oh)), F32(rw / F32(ow))
      gh = sampling_ratio if sampling_ratio > 0 else int(np.ceil(F32(rh / F32(oh))))
      gw = sampling_ratio if sampling_ratio > 0 else int(np.ceil(F32(rw / F32(ow))))
      count = max(gh * gw, 1)
      for ph in range(oh):
        for pw in range(ow):
          acc = np.zeros(ch)
          for iy in range(gh):
            y = F32(sy + F32(ph) * bh) + F32(F32(iy + 0.5) * bh) / F32(gh)
            for ix in range(gw):
              x = F32(sx + F32(pw) * bw) + F32(F32(ix + 0.5) * bw) / F32(gw)
              acc += _bilinear(feats[n], F32(y), F32(x))
          out[n, r, ph, pw] = acc / count
  return out


def _boxes(rng, n_img, img_h, img_w, inside_only=False):
  """A mix of in-image, tiny, huge, partly / wholly outside and degenerate boxes [N, R, 4]."""
  out = []
  for _ in range(n_img):
    b = []
    for _ in range(6):  # ordinary boxes inside the image
      x1, x2 = np.sort(rng.uniform(0, img_w, 2))
      y1, y2 = np.sort(rng.uniform(0, img_h, 2))
      b.append([x1, y1, x2, y2])
    cx, cy = rng.uniform(0, img_w), rng.uniform(0, img_h)
    b.append([cx, cy, cx + 0.05, cy + 0.08])  # tiny
    b.append([cx, cy, cx, cy + 3.0])  # zero width
    b.append([0, 0, img_w, img_h])  # whole image
    if not inside_only:
      b.append([-2.5 * img_w, -1.7 * img_h, 3.1 * img_w, 2.2 * img_h])  # huge
      b.append([-0.4 * img_w, 0.3 * img_h, 0.5 * img_w, 1.6 * img_h])  # partly outside
      b.append([1.3 * img_w, 1.2 * img_h, 1.9 * img_w, 1.5 * img_h])  # wholly outside
      b.append([0.7 * img_w, 0.6 * img_h, 0.2 * img_w, 0.1 * img_h])  # x2 < x1, y2 < y1
    out.append(b)
  return np.asarray(out, np.float32)


@functools.lru_cache(maxsize=None)
def _jitted(out_hw, scale, sampling_ratio, aligned, method, chunk):
  return jax.jit(
      lambda f, b: roi_align(
          f, b, out_hw, scale, sampling_ratio, aligned, chunk_size=chunk, method=method
      )
  )


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("hw", [(7, 9), (9, 6)])
def test_separable_matches_kernel(aligned, sampling_ratio, hw):
  rng = np.random.default_rng(hash((aligned, sampling_ratio, hw)) % 2**32)
  scale = 0.25
  feats = rng.normal(size=(2, *hw, 3)).astype(np.float32)
  boxes = _boxes(rng, 2, hw[0] / scale, hw[1] / scale)
  out = _jitted((3, 4), scale, sampling_ratio, aligned, "separable", 5)(feats, boxes)
  ref = ref_roi_align(feats, boxes, (3, 4), scale, sampling_ratio, aligned)
  assert out.shape == ref.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-5)
  assert np.abs(ref).max() > 0.1  # the comparison is not vacuous


def test_huge_boxes_many_samples():
  """Bins far bigger than the map (gh ~ 40): the static window must still find every sample."""
  rng = np.random.default_rng(1)
  feats = rng.normal(size=(1, 5, 6, 2)).astype(np.float32)
  boxes = np.array([[[-300, -200, 260, 310], [-50.3, 2.1, 90.7, 11.9], [3, -400, 9, 500]]], F32)
  out = _jitted((2, 2), 0.5, 0, True, "separable", 64)(feats, boxes)
  ref = ref_roi_align(feats, boxes, (2, 2), 0.5, 0, True)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-5)
  assert np.abs(ref).max() > 0.01


def test_crop_tiers_at_map_edges():
  """Small RoIs take per-RoI crops of the map (tiers); crops clipped at the edges stay exact."""
  rng = np.random.default_rng(4)
  feats = rng.normal(size=(2, 20, 24, 2)).astype(np.float32)
  corners = np.array([[0, 0], [90, 0], [0, 75], [90, 75], [45, 40]], np.float32)
  small = np.concatenate([corners, corners + rng.uniform(3, 14, size=(5, 2))], 1)
  mid = np.array([[5, 5, 50, 40], [40, 30, 95, 79]], np.float32)
  boxes = np.stack([np.concatenate([small, mid, _boxes(rng, 1, 80, 96)[0]])] * 2)
  boxes[1] = boxes[1, ::-1]
  out = _jitted((3, 3), 0.25, 0, True, "separable", 4)(feats, boxes)
  ref = ref_roi_align(feats, boxes, (3, 3), 0.25, 0, True)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["separable", "gather"])
def test_exact_bin_boundaries(method):
  """Sizes that are exact multiples of the bin count (ceil and the [-1, H] test sit on the edge);
  XLA's x / broadcast(y) -> x * (1 / y) rewrite breaks these unless guarded."""
  rng = np.random.default_rng(2)
  feats = rng.normal(size=(1, 22, 23, 2)).astype(np.float32)
  # 21 / 7 = 3 exactly, but 21 * float32(1 / 7) = 3.0000002 -> ceil 4
  boxes = np.array(
      [
          [
              [0.5, 0.5, 21.5, 21.5],
              [1.5, 0.5, 22.5, 21.5],
              [-3.5, -2.5, 17.5, 18.5],
              [0, 0, 21, 21],
              [-30, -40, 47, 37],
          ]
      ],
      F32,
  )
  if method == "gather":  # exact only for boxes no larger than the image (module doc)
    boxes = boxes[:, :4]
  for aligned in (True, False):
    out = _jitted((7, 7), 1.0, 0, aligned, method, 64)(feats, boxes)
    ref = ref_roi_align(feats, boxes, (7, 7), 1.0, 0, aligned)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampling_ratio", [0, 3])
def test_gather_matches_kernel_inside_image(sampling_ratio):
  rng = np.random.default_rng(7 + sampling_ratio)
  feats = rng.normal(size=(2, 8, 7, 3)).astype(np.float32)
  boxes = _boxes(rng, 2, 8 / 0.5, 7 / 0.5, inside_only=True)
  out = _jitted((3, 2), 0.5, sampling_ratio, True, "gather", 4)(feats, boxes)
  ref = ref_roi_align(feats, boxes, (3, 2), 0.5, sampling_ratio, True)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("aligned", [True, False])
def test_gather_fixed_ratio_exact_for_all_boxes(aligned):
  rng = np.random.default_rng(21)
  feats = rng.normal(size=(2, 6, 9, 3)).astype(np.float32)
  boxes = _boxes(rng, 2, 6 / 0.25, 9 / 0.25)
  out = _jitted((2, 3), 0.25, 2, aligned, "auto", 64)(feats, boxes)  # auto -> gather here
  ref = ref_roi_align(feats, boxes, (2, 3), 0.25, 2, aligned)
  np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-5)
  assert _auto_method(6, 9, 2, 3, 2) == "gather" and _auto_method(6, 9, 2, 3, 0) == "separable"


def test_bfloat16_features():
  rng = np.random.default_rng(3)
  feats = rng.normal(size=(1, 7, 9, 4)).astype(np.float32)
  boxes = _boxes(rng, 1, 28, 36)
  f16 = jnp.asarray(feats, jnp.bfloat16)
  out = _jitted((3, 4), 0.25, 0, True, "separable", 64)(f16, boxes)
  assert out.dtype == jnp.bfloat16
  ref = ref_roi_align(np.asarray(f16.astype(jnp.float32)), boxes, (3, 4), 0.25, 0, True)
  # only the final rounding to bfloat16 (8 mantissa bits) separates us from the reference
  np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), ref, rtol=2**-8, atol=1e-6)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_bfloat16_matrix_unit_path(monkeypatch):
  """The accelerator branch (16-bit matmul operands, float32 accumulation), forced on the CPU:
  forward and feature gradient within 1% (relative norm) of the exact kernel / the float32 path,
  every element within 4 bf16 ulps of the output scale of the reference. One chunk taking the
  full-map branch: XLA CPU cannot run the batched per-RoI (crop) dots of this branch (no BF16 x
  BF16 = F32 dot kernel for them), the reason the CPU branch stays float32."""
  rng = np.random.default_rng(5)
  feats = jnp.asarray(rng.normal(size=(2, 25, 34, 8)), jnp.bfloat16)  # crop tiers at 16 cells
  boxes = _boxes(rng, 2, 25 * 16, 34 * 16)  # with the whole image: the full-map branch
  exact = np.asarray(feats.astype(jnp.float32))
  ref = ref_roi_align(exact, boxes, (7, 7), 1 / 16, 0, True)

  def fresh():  # a new function per trace: jit's cache would hand back the one traced unpatched
    return lambda x: roi_align(x, boxes, (7, 7), 1 / 16, 0, True, chunk_size=64)

  def fresh_loss():
    fn = fresh()
    return lambda x: jnp.sum(fn(x).astype(jnp.float32) * cot)

  cpu_out = jax.jit(fresh())(feats)
  # the CPU branch is float32: only the final rounding to bfloat16 separates it from the kernel
  # (atol: float32 summation order against the kernel's, at an output scale of ~1)
  np.testing.assert_allclose(np.asarray(cpu_out, F32), ref, rtol=2**-8, atol=1e-5)
  cot = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
  g32 = jax.jit(jax.grad(fresh_loss()))(feats.astype(jnp.float32))
  monkeypatch.setattr(jax.lax, "platform_dependent", lambda *a, cpu, default: default(*a))
  out = jax.jit(fresh())(feats)
  assert out.dtype == jnp.bfloat16
  out = np.asarray(out, F32)
  assert not np.array_equal(out, np.asarray(cpu_out, F32))  # the other branch did run
  assert _rel(out, ref) < 1e-2
  assert np.abs(out - ref).max() <= 4 * 2**-8 * np.abs(ref).max()
  g16 = jax.jit(jax.grad(fresh_loss()))(feats)
  assert g16.dtype == jnp.bfloat16 and _rel(g16, g32) < 1e-2


def test_bfloat16_gradients_summed_in_float32():
  """Crop branches and chunks (gathers whose gradients are scatter-adds, `lax.map` carries) work on
  float32 copies of 16-bit features: the bf16 result and feature gradient are exactly the float32
  ones rounded once (on CPU, where the matmuls are float32 too)."""
  rng = np.random.default_rng(6)
  feats = jnp.asarray(rng.normal(size=(2, 25, 34, 8)), jnp.bfloat16)
  wh = rng.uniform(8, 90, (2, 40, 2))  # overlapping boxes under 1/4 of the map: crop tiers
  xy = rng.uniform(0, 1, (2, 40, 2)) * ([34 * 16, 25 * 16] - wh)
  boxes = jnp.asarray(np.concatenate([xy, xy + wh], -1), jnp.float32)
  # bf16-representable, so that the bf16 output's (bf16) cotangent is the same as float32's
  cot = jnp.asarray(rng.normal(size=(2, 40, 7, 7, 8)), jnp.bfloat16).astype(jnp.float32)

  def loss(x):
    out = roi_align(x, boxes, (7, 7), 1 / 16, 0, True, chunk_size=8)
    return jnp.sum(out.astype(jnp.float32) * cot), out

  (_, o16), g16 = jax.jit(jax.value_and_grad(loss, has_aux=True))(feats)
  (_, o32), g32 = jax.jit(jax.value_and_grad(loss, has_aux=True))(feats.astype(jnp.float32))
  assert o16.dtype == g16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(o16, F32), np.asarray(o32.astype(jnp.bfloat16), F32))
  np.testing.assert_array_equal(np.asarray(g16, F32), np.asarray(g32.astype(jnp.bfloat16), F32))


@pytest.mark.parametrize("method", ["separable", "gather"])
def test_gradients_wrt_features(method):
  rng = np.random.default_rng(11)
  boxes = jnp.asarray(_boxes(rng, 1, 20, 24, inside_only=(method == "gather")))[:, :8]
  with jax.enable_x64(True):
    feats = jnp.asarray(rng.normal(size=(1, 5, 6, 2)), jnp.float64)
    f = jax.jit(lambda x: roi_align(x, boxes, (2, 3), 0.25, 0, True, chunk_size=3, method=method))
    check_grads(f, (feats,), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_nan_boxes_give_zeros_and_finite_grads():
  rng = np.random.default_rng(5)
  feats = jnp.asarray(rng.normal(size=(1, 6, 6, 2)), jnp.float32)
  boxes = np.array([[[1, 1, 10, 12], [np.nan, 2, 8, 9], [1, 2, np.inf, 9]]], F32)
  fn = jax.jit(lambda f: roi_align(f, boxes, 2, 0.5, 0, True))
  out = fn(feats)
  assert np.all(np.asarray(out[0, 1:]) == 0) and np.abs(np.asarray(out[0, 0])).max() > 0
  cot = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  g = jax.grad(lambda f: jnp.sum(fn(f) * cot))(feats)
  g_first = jax.grad(lambda f: jnp.sum(fn(f)[:, :1] * cot[:, :1]))(feats)
  assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_first), atol=1e-6)  # NaN rows add nothing


def test_empty_and_bad_shapes():
  feats = jnp.zeros((2, 4, 4, 3))
  assert roi_align(feats, jnp.zeros((2, 0, 4)), (2, 3), 1.0).shape == (2, 0, 2, 3, 3)
  # x2 < x1: torchvision gives zeros for aligned + adaptive, a 1-px box for aligned=False
  rev = jnp.asarray([[[5.0, 5.0, 2.0, 2.0]]] * 2)
  assert np.all(np.asarray(roi_align(feats + 1, rev, 2, 0.5, 0, True)) == 0)
  assert np.all(np.asarray(roi_align(feats + 1, rev, 2, 0.5, 0, False)) == 1)
  with pytest.raises(ValueError, match="batch mismatch"):
    roi_align(feats, jnp.zeros((3, 5, 4)), 2, 1.0)
  with pytest.raises(ValueError, match=r"\[N, R, 4\]"):
    roi_align(feats, jnp.zeros((2, 5, 5)), 2, 1.0)
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    roi_align(jnp.zeros((4, 4, 3)), jnp.zeros((2, 5, 4)), 2, 1.0)
  with pytest.raises(ValueError, match="method"):
    roi_align(feats, jnp.zeros((2, 5, 4)), 2, 1.0, method="fast")


def test_chunking_does_not_change_result():
  rng = np.random.default_rng(9)
  feats = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
  boxes = _boxes(rng, 2, 24, 28)
  a = _jitted((2, 2), 0.25, 0, True, "separable", 64)(feats, boxes)
  b = _jitted((2, 2), 0.25, 0, True, "separable", 3)(feats, boxes)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
