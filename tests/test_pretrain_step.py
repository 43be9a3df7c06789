"""The RegionCLIP step: loss switches and weights, frozen parameters bit-identical, bf16 option,
proposal sources."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionclip_jax.models import clip as clip_lib
from regionclip_jax.pretrain.proposals import make_proposal_fn
from regionclip_jax.pretrain.step import LossConfig, make_pretrain_step
from regionclip_jax.train import optimizer as opt
from regionclip_jax.train.state import create_train_state

CFG = clip_lib.CLIPConfig(
    16,
    clip_lib.ResNetConfig((1, 1, 1, 1), 8, 2, 32),
    clip_lib.TextConfig(context_length=8, vocab_size=64, width=16, heads=1, layers=1),
)
TRAINABLE = (r"^visual/(layer2|layer3|layer4|attnpool)/",)


@pytest.fixture(scope="module")
def setup():
  params = jax.tree.map(np.asarray, clip_lib.init_params(CFG, seed=0))
  teacher = jax.tree.map(np.asarray, clip_lib.init_params(CFG, seed=1))
  rng = np.random.default_rng(0)
  b = 6
  batch = {
      "image": jnp.asarray(rng.normal(size=(b, 32, 32, 3)), jnp.float32),
      "image_size": jnp.full((b, 2), 32, jnp.int32),
      "boxes": jnp.tile(jnp.asarray([[2.0, 2.0, 20.0, 20.0], [10.0, 4.0, 30.0, 28.0]]), (b, 1, 1)),
      "box_mask": jnp.tile(jnp.asarray([True, False]), (b, 1)),
      "caption_tokens": jnp.asarray(
          np.concatenate([rng.integers(1, 60, (b, 4)), np.full((b, 1), 63), np.zeros((b, 3))], 1),
          jnp.int32,
      ),
  }
  concepts = jnp.asarray(rng.normal(size=(5, 16)), jnp.float32)
  frozen = {"teacher_params": teacher, "concept_emb": concepts, "teacher_concept_emb": concepts}
  mask = opt.trainable_mask(params, TRAINABLE, (clip_lib.FROZEN_BN_REGEX,))
  return params, batch, frozen, mask


def _run(setup, loss_cfg, steps=1, dtype=jnp.float32, lr=0.05):
  params, batch, frozen, mask = setup
  tx = opt.sgd(lr, weight_decay=1e-4)
  model = clip_lib.CLIP(CFG, dtype=dtype)
  step = jax.jit(
      make_pretrain_step(
          model, clip_lib.CLIP(CFG), tx, mask, make_proposal_fn("boxes_jitter", 6), loss_cfg
      )
  )
  state = create_train_state(jax.tree.map(np.copy, params), tx, mask)
  for _ in range(steps):
    state, metrics = step(state, batch, frozen)
  return state, jax.device_get(metrics)


def test_full_step_frozen_bits_identical_and_weighted_total(setup):
  params, _, _, mask = setup
  cfg = LossConfig(
      region_distill=1.0,
      region_contrastive=0.5,
      image_text=2.0,
      group_size=3,
      concept_threshold=0.3,
  )
  state, m = _run(setup, cfg, steps=2)
  np.testing.assert_allclose(
      m["loss"],
      m["region_distill"] + 0.5 * m["region_contrastive"] + 2.0 * m["image_text"],
      rtol=1e-6,
  )
  assert 0 < m["kept_fraction"] <= 1
  flat_new = dict(jax.tree_util.tree_leaves_with_path(state.params))
  changed = 0
  for path, old in jax.tree_util.tree_leaves_with_path(params):
    new = np.asarray(flat_new[path])
    name = "/".join(k.key for k in path)
    is_train = _lookup(mask, path)
    if is_train:
      changed += not np.array_equal(new, old)
    else:
      assert new.tobytes() == np.asarray(old).tobytes(), f"frozen {name} changed"
  assert changed > 10
  assert _lookup(mask, _path("visual/layer3/0/conv1/kernel"))
  assert not _lookup(mask, _path("visual/layer1/0/conv1/kernel"))
  assert not _lookup(mask, _path("visual/layer3/0/bn1/scale"))
  assert not _lookup(mask, _path("token_embedding/embedding"))


def _path(s):
  return tuple(jax.tree_util.DictKey(k) for k in s.split("/"))


def _lookup(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree


def test_switches_remove_terms(setup):
  _, m = _run(setup, LossConfig(region_distill=0.0, region_contrastive=0.0, image_text=1.0))
  assert "region_distill" not in m and "region_contrastive" not in m
  np.testing.assert_allclose(m["loss"], m["image_text"], rtol=1e-6)
  with pytest.raises(ValueError, match="every loss is switched off"):
    _run(setup, LossConfig(0.0, 0.0, 0.0))


@pytest.mark.slow
def test_bf16_compute_close_to_fp32(setup):
  cfg = LossConfig(image_text=0.0)
  _, m32 = _run(setup, cfg)
  _, m16 = _run(setup, cfg, dtype=jnp.bfloat16)
  assert np.isfinite(m16["loss"])
  np.testing.assert_allclose(m16["region_distill"], m32["region_distill"], rtol=0.15, atol=0.02)


def test_proposals_boxes_jitter_and_random():
  key = jax.random.PRNGKey(0)
  batch = {
      "image": jnp.zeros((2, 64, 48, 3)),
      "image_size": jnp.asarray([[64, 48], [40, 30]]),
      "boxes": jnp.asarray([[[4.0, 4.0, 20.0, 30.0], [0.0, 0.0, 0.0, 0.0]]] * 2),
      "box_mask": jnp.asarray([[True, False], [True, False]]),
  }
  boxes, valid = make_proposal_fn("boxes_jitter", 8, jitter_copies=3)(key, batch)
  assert boxes.shape == (2, 8, 4) and bool(valid.all())
  np.testing.assert_allclose(boxes[0, 0], [4.0, 4.0, 20.0, 30.0])  # copy 0 is the GT box itself
  np.testing.assert_allclose(boxes[1, 0], [4.0, 4.0, 20.0, 30.0])
  assert bool((boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all())
  assert bool(
      (boxes[1, :, 2] <= 30).all() and (boxes[1, :, 3] <= 40).all()
  )  # inside the valid size
  rb, rv = make_proposal_fn("random", 5)(key, batch)
  assert rb.shape == (2, 5, 4) and bool(rv.all())
  with pytest.raises(ValueError, match="exceed num_proposals"):
    make_proposal_fn("boxes_jitter", 4, jitter_copies=3)(key, batch)
  with pytest.raises(ValueError, match="needs a frozen base-class RPN"):
    make_proposal_fn("rpn", 4)


def test_image_text_temperature_applies_to_that_term_only(setup):
  _, split = _run(setup, LossConfig(temperature=0.01, image_text_temperature=0.1))
  _, soft = _run(setup, LossConfig(temperature=0.1))
  np.testing.assert_allclose(split["image_text"], soft["image_text"], rtol=1e-6)
  # the region terms kept tau 0.01: they differ from the all-0.1 run
  assert abs(split["region_distill"] - soft["region_distill"]) > 1e-3
