"""`layers.conv2d`, `layers.Conv`, `layers.conv1x1`: nn.Conv's outputs and the kernel-gradient modes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionclip_jax.models import layers


def _data(n=3, size=9, cin=5, cout=7, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, size, size, cin)).astype(np.float32))
  k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)).astype(np.float32))
  return x, k


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
@pytest.mark.parametrize("kernel_grad", ["xla", "per_sample", "auto"])
def test_conv_module_matches_nn_conv_bitwise(strides, kernel_grad):
  x, _ = _data()
  pad = ((1, 1), (1, 1))
  ref = nn.Conv(7, (3, 3), strides=strides, padding=pad, use_bias=False)
  ours = layers.Conv(7, (3, 3), strides=strides, padding=pad, kernel_grad=kernel_grad)
  params = ref.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == jax.tree.map(
      jnp.shape, params
  )
  np.testing.assert_array_equal(ours.apply(params, x), ref.apply(params, x))


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_per_sample_kernel_grad(strides):
  x, k = _data()
  pad = ((1, 1), (1, 1))
  g = jax.random.normal(jax.random.PRNGKey(1), layers.conv2d(x, k, strides, pad, "xla").shape)

  def grads(mode):
    _, vjp = jax.vjp(lambda a, b: layers.conv2d(a, b, strides, pad, mode), x, k)
    return vjp(g)

  dx_xla, dk_xla = grads("xla")
  dx_ps, dk_ps = grads("per_sample")
  np.testing.assert_array_equal(dx_ps, dx_xla)  # the input gradient is autodiff's
  np.testing.assert_allclose(dk_ps, dk_xla, rtol=1e-5, atol=1e-5)
  # The per-sample sum, written out.
  dks = [
      jax.vjp(lambda b, i=i: layers.conv2d(x[i : i + 1], b, strides, pad, "xla"), k)[1](
          g[i : i + 1]
      )[0]
      for i in range(x.shape[0])
  ]
  np.testing.assert_array_equal(dk_ps, dks[0] + dks[1] + dks[2])


def test_per_sample_is_xla_at_batch_one():
  x, k = _data(n=1)
  g = jnp.ones((1, 9, 9, 7))
  a = jax.vjp(lambda b: layers.conv2d(x, b, padding="SAME", kernel_grad="per_sample"), k)[1](g)
  b = jax.vjp(lambda b: layers.conv2d(x, b, padding="SAME", kernel_grad="xla"), k)[1](g)
  np.testing.assert_array_equal(a[0], b[0])


def test_auto_picks_per_sample_for_cpu_float32_only():
  x, k = _data()

  def uses_custom_vjp(a, b):
    jaxpr = jax.make_jaxpr(lambda a, b: layers.conv2d(a, b, kernel_grad="auto"))(a, b)
    return "custom_vjp" in str(jaxpr)

  assert uses_custom_vjp(x, k) == (jax.default_backend() == "cpu")
  assert not uses_custom_vjp(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))


def test_jit_remat_and_bad_mode():
  x, k = _data()
  loss = jax.jit(
      jax.grad(jax.checkpoint(lambda b: layers.conv2d(x, b, kernel_grad="per_sample").sum()))
  )
  ref = jax.grad(lambda b: layers.conv2d(x, b, kernel_grad="xla").sum())(k)
  np.testing.assert_allclose(loss(k), ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="kernel_grad"):
    layers.conv2d(x, k, kernel_grad="fast")


def _data_1x1(shape=(3, 6, 5, 8), cout=4, seed=2):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  k = jnp.asarray(rng.normal(size=(shape[-1], cout)).astype(np.float32))
  g = jnp.asarray(rng.normal(size=(*shape[:-1], cout)).astype(np.float32))
  return x, k, g


def test_conv1x1_flat_kernel_grad():
  x, k, g = _data_1x1()

  def run(mode):
    y, vjp = jax.vjp(lambda a, b: layers.conv1x1(a, b, mode), x, k)
    return (y, *vjp(g))

  y_xla, dx_xla, dk_xla = run("xla")
  y_ps, dx_ps, dk_ps = run("per_sample")
  np.testing.assert_array_equal(y_ps, y_xla)  # outputs and input gradient are autodiff's
  np.testing.assert_array_equal(dx_ps, dx_xla)
  # The kernel gradient is sum over positions of x^T g, in float64 numpy.
  ref = np.einsum("nhwc,nhwd->cd", np.float64(x), np.float64(g))
  np.testing.assert_allclose(dk_ps, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk_xla, ref, rtol=1e-5, atol=1e-5)
  # Also under jit + remat, as in the rematerialised towers.
  f = jax.jit(jax.grad(jax.checkpoint(lambda b: (layers.conv1x1(x, b, "per_sample") * g).sum())))
  np.testing.assert_allclose(f(k), ref, rtol=1e-5, atol=1e-5)


def test_conv1x1_auto_and_bad_mode():
  x, k, _ = _data_1x1()

  def uses_custom_vjp(a, b):
    return "custom_vjp" in str(jax.make_jaxpr(lambda a, b: layers.conv1x1(a, b, "auto"))(a, b))

  assert uses_custom_vjp(x, k) == (jax.default_backend() == "cpu")
  assert not uses_custom_vjp(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
  assert "custom_vjp" not in str(jax.make_jaxpr(lambda a, b: layers.conv1x1(a, b, "xla"))(x, k))
  with pytest.raises(ValueError, match="kernel_grad"):
    layers.conv1x1(x, k, "fast")


def test_conv1x1_module_matches_nn_conv():
  x, _, _ = _data_1x1()
  ref = nn.Conv(4, (1, 1), use_bias=False)
  params = ref.init(jax.random.PRNGKey(0), x)
  for mode in ("xla", "per_sample", "auto"):
    out = layers.Conv1x1(4, kernel_grad=mode).apply(params, x)
    np.testing.assert_allclose(out, ref.apply(params, x), rtol=1e-6, atol=1e-6)
