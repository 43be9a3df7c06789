"""Optimiser: schedule, per-tensor clipping + SGD against torch.optim.SGD, trainable mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionclip_jax.train import optimizer as opt
from regionclip_jax.train.state import apply_gradients, create_train_state, masked_value_and_grad


def test_warmup_multistep_schedule_values():
  s = opt.warmup_multistep_schedule(
      0.002, warmup_steps=1000, warmup_factor=0.001, decay_steps=(300_000, 525_000)
  )
  np.testing.assert_allclose(s(0), 0.002 * 0.001, rtol=1e-6)
  np.testing.assert_allclose(s(500), 0.002 * (0.001 * 0.5 + 0.5), rtol=1e-6)
  np.testing.assert_allclose(s(1000), 0.002, rtol=1e-6)
  np.testing.assert_allclose(s(299_999), 0.002, rtol=1e-6)
  np.testing.assert_allclose(s(300_000), 0.0002, rtol=1e-5)
  np.testing.assert_allclose(s(525_000), 0.00002, rtol=1e-5)


def test_sgd_per_tensor_clip_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  p0 = {
      "a": rng.normal(size=(3, 4)).astype(np.float32),
      "b": rng.normal(size=(5,)).astype(np.float32),
  }
  grads = [
      {k: (rng.normal(size=v.shape) * s).astype(np.float32) for k, v in p0.items()}
      for s in (10.0, 0.1, 3.0)
  ]  # first and third steps clip, the second does not
  lr = 0.1
  tx = opt.sgd(lr, momentum=0.9, weight_decay=1e-2, clip_norm=1.0, clip_type="per_tensor")
  params = jax.tree.map(jnp.asarray, p0)
  st = tx.init(params)
  for g in grads:
    u, st = tx.update(jax.tree.map(jnp.asarray, g), st, params)
    params = jax.tree.map(lambda p, x: p + x, params, u)

  tp = {k: torch.tensor(v, requires_grad=True) for k, v in p0.items()}
  topt = torch.optim.SGD(list(tp.values()), lr=lr, momentum=0.9, weight_decay=1e-2)
  for g in grads:
    for k in tp:
      tp[k].grad = torch.tensor(g[k])
      torch.nn.utils.clip_grad_norm_([tp[k]], 1.0)  # detectron2: one call per parameter
    topt.step()
  for k in tp:
    np.testing.assert_allclose(params[k], tp[k].detach().numpy(), rtol=1e-5, atol=1e-7)


def test_global_clip_option_differs_from_per_tensor():
  g = {"a": jnp.full((4,), 10.0), "b": jnp.full((4,), 0.01)}
  p = jax.tree.map(jnp.zeros_like, g)
  per_tx = opt.sgd(1.0, momentum=0, weight_decay=0, clip_norm=1.0)
  per, _ = per_tx.update(g, per_tx.init(p), p)
  glob_tx = opt.sgd(1.0, momentum=0, weight_decay=0, clip_norm=1.0, clip_type="global")
  glo, _ = glob_tx.update(g, glob_tx.init(p), p)
  np.testing.assert_allclose(jnp.linalg.norm(per["a"]), 1.0, rtol=1e-5)
  np.testing.assert_allclose(per["b"], -0.01, rtol=1e-5)  # small tensor untouched
  assert float(jnp.abs(glo["b"]).max()) < 0.001  # scaled with the big one
  with pytest.raises(ValueError, match="clip_type"):
    opt.sgd(1.0, clip_type="bogus")


def test_trainable_mask_and_frozen_bits_identical():
  params = {
      "visual": {
          "layer1": {"w": jnp.array([-0.0, 1.0])},
          "layer3": {"w": jnp.ones(2)},
          "layer3_bn": {"bn1": {"scale": jnp.ones(2)}},
      },
      "transformer": {"w": jnp.array([-0.0, 2.0])},
  }
  mask = opt.trainable_mask(params, trainable=[r"^visual/layer3"], frozen=[r"(^|/)bn\d+/"])
  assert mask == {
      "visual": {
          "layer1": {"w": False},
          "layer3": {"w": True},
          "layer3_bn": {"bn1": {"scale": False}},
      },
      "transformer": {"w": False},
  }
  with pytest.raises(ValueError, match="matches no parameter"):
    opt.trainable_mask(params, trainable=[r"^visual/layer9"])
  tx = opt.sgd(0.1, weight_decay=0.1)
  state = create_train_state(params, tx, mask)

  def loss_fn(p):
    return (
        sum(jnp.sum(x**2) for x in jax.tree.leaves(p)) + jnp.sum(p["visual"]["layer1"]["w"]),
        None,
    )

  for _ in range(3):
    (_, _), g = masked_value_and_grad(loss_fn, state.params, mask)
    assert g["visual"]["layer1"]["w"] is None
    state = apply_gradients(state, g, tx, mask)
  before = jax.tree.leaves(params)
  after = jax.tree.leaves(state.params)
  flat_mask = jax.tree.leaves(mask)
  for b, a, m in zip(before, after, flat_mask):
    if m:
      assert not np.array_equal(np.asarray(a), np.asarray(b))
    else:
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes()  # -0.0 stays -0.0
  assert int(state.step) == 3
