"""uint8 host batches normalised on the device (the real presets' default) feed the same steps
as host-normalised float batches: `normalize_batch` against the host transform, the RegionCLIP
step and the detector predictor on both kinds of batch, and the real presets' input settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune as finetune_configs
from configs import pretrain as pretrain_configs
from regionclip_jax.data import transforms as T
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


def _padded_pair(sizes, pad=32, seed=0):
  """The same photos-like records padded on the host both ways: (uint8 batch, float batch)."""
  rng = np.random.default_rng(seed)
  images = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in sizes]
  out = []
  for normalize in (False, True):
    recs = [T.NormalizeAndPad(pad, normalize=normalize).map({"image": im}) for im in images]
    out.append({k: np.stack([r[k] for r in recs]) for k in ("image", "image_mask", "image_size")})
  return out


def test_normalize_batch_matches_host_normalisation():
  u8, f32 = _padded_pair([(32, 20), (17, 32), (5, 9)])
  assert u8["image"].dtype == np.uint8 and f32["image"].dtype == np.float32
  got = jax.jit(T.normalize_batch)({k: jnp.asarray(v) for k, v in u8.items()})["image"]
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), f32["image"], atol=1e-5)
  # padding beyond image_size is exactly 0, as on the host (0 = the mean colour)
  assert np.all(np.asarray(got)[2, 5:, :] == 0) and np.all(np.asarray(got)[2, :, 9:] == 0)


def test_normalize_batch_passes_float_batches_through():
  _, f32 = _padded_pair([(32, 32)])
  batch = {k: jnp.asarray(v) for k, v in f32.items()}
  assert T.normalize_batch(batch)["image"] is batch["image"]


def test_pretrain_step_same_loss_from_uint8_and_float_batches():
  u8, f32 = _padded_pair([(32, 32), (24, 32), (32, 28)], seed=1)
  params = jax.tree.map(np.asarray, clip_lib.init_params(CFG, seed=0))
  teacher = jax.tree.map(np.asarray, clip_lib.init_params(CFG, seed=1))
  rng = np.random.default_rng(0)
  b = 3
  extra = {
      "boxes": jnp.tile(jnp.asarray([[2.0, 2.0, 20.0, 20.0], [10.0, 4.0, 30.0, 28.0]]), (b, 1, 1)),
      "box_mask": jnp.tile(jnp.asarray([True, True]), (b, 1)),
      "caption_tokens": jnp.asarray(
          np.concatenate([rng.integers(1, 60, (b, 4)), np.full((b, 1), 63), np.zeros((b, 3))], 1),
          jnp.int32,
      ),
  }
  concepts = jnp.asarray(rng.normal(size=(5, 16)), jnp.float32)
  frozen = {"teacher_params": teacher, "concept_emb": concepts, "teacher_concept_emb": concepts}
  mask = opt.trainable_mask(
      params, (r"^visual/(layer3|layer4|attnpool)/",), (clip_lib.FROZEN_BN_REGEX,)
  )
  tx = opt.sgd(0.01)
  step = jax.jit(
      make_pretrain_step(
          clip_lib.CLIP(CFG),
          clip_lib.CLIP(CFG),
          tx,
          mask,
          make_proposal_fn("boxes_jitter", 6),
          LossConfig(group_size=3),
      )
  )
  losses = []
  for host in (u8, f32):
    batch = {**{k: jnp.asarray(v) for k, v in host.items()}, **extra}
    state = create_train_state(jax.tree.map(np.copy, params), tx, mask)
    _, metrics = step(state, batch, frozen)
    losses.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  assert losses[0].keys() == losses[1].keys()
  for k in losses[0]:
    assert losses[0][k] == pytest.approx(losses[1][k], rel=1e-4, abs=1e-5), k


@pytest.mark.parametrize(
    "cfg",
    [
        pretrain_configs.get_config("rn50_cc3m").data,
        finetune_configs.get_config("coco_ovd_rn50").data,
        finetune_configs.get_config("lvis_rn50").data,
    ],
)
def test_real_presets_read_at_accelerator_rates(cfg):
  assert cfg.num_workers >= 1 and not cfg.normalize_on_host
  assert cfg.resize_backend == "cv2" and cfg.draft_decode


def test_shapes_presets_keep_the_in_process_float_path():
  for cfg in (
      pretrain_configs.get_config("shapes").data,
      finetune_configs.get_config("shapes").data,
  ):
    assert cfg.num_workers == 0 and cfg.normalize_on_host
