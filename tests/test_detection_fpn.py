"""FPN variant of the detector: pyramid shapes, FPN arithmetic against a numpy port, RoIs pooled from
their detectron2 level through `multilevel_roi_align`, training lowers the losses, config selection.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import finetune as finetune_config
from regionclip_jax.data.shapes_world import ShapesWorld
from regionclip_jax.data.transforms import apply_transforms, shapes_world_transforms
from regionclip_jax.detection import builders, export, fpn
from regionclip_jax.detection.heads import OpenVocabFasterRCNN
from regionclip_jax.detection.settings import RoIHeadSettings, RPNSettings
from regionclip_jax.detection.train_lib import make_detector_step, make_rpn_step
from regionclip_jax.models.clip import FROZEN_BN_REGEX, get_config
from regionclip_jax.ops.roi_align import roi_align
from regionclip_jax.train.optimizer import trainable_mask
from regionclip_jax.train.state import create_train_state

TINY = get_config("tiny_rn")  # width 16: res2..res5 have 64, 128, 256, 512 channels
STEPS = 15
SMALL_FPN = {"fpn_channels": 32, "fc_dim": 64, "canonical_box_size": 32.0}  # 64 px images


@pytest.fixture(scope="module")
def det64():
  det = builders.build_detector(TINY, head="fpn", fpn=SMALL_FPN)
  return det, builders.init_detector(det, 64, seed=0)


def test_pyramid_fpn_and_head_shapes(det64):
  det, v = det64
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
  boxes = jnp.asarray(
      np.tile([[[2, 2, 30, 40], [10, 0, 63, 50], [0, 0, 0, 0]]], (2, 1, 1)), jnp.float32
  )

  def everything(m, im, b):  # one compile for all the outputs
    bb = m.backbone
    return bb.image_pyramid(im), bb.image_res4(im), m.fpn(bb.image_pyramid(im)), m(im, b)

  pyr, res4, levels, (feats, deltas) = jax.jit(
      lambda v, x, b: det.apply(v, x, b, method=everything)
  )(v, x, boxes)
  assert {k: a.shape for k, a in pyr.items()} == {
      "res2": (2, 16, 16, 64),
      "res3": (2, 8, 8, 128),
      "res4": (2, 4, 4, 256),
      "res5": (2, 2, 2, 512),
  }
  # res4 of the pyramid is the C4 trunk's res4
  np.testing.assert_allclose(pyr["res4"], res4, rtol=1e-5, atol=1e-5)
  assert {k: a.shape for k, a in levels.items()} == {
      "p2": (2, 16, 16, 32),
      "p3": (2, 8, 8, 32),
      "p4": (2, 4, 4, 32),
      "p5": (2, 2, 2, 32),
      "p6": (2, 1, 1, 32),
  }
  assert feats.shape == (2, 3, TINY.embed_dim) and deltas.shape == (2, 3, 4)
  assert np.all(np.isfinite(feats)) and np.all(np.isfinite(deltas))

  rpn, gen = builders.build_rpn(
      TINY, head="fpn", anchor_sizes=(8, 16, 32, 64, 128), fpn_channels=32
  )
  rv = builders.init_rpn(rpn, 64)
  logits, dl = jax.jit(rpn.apply)(rv, x)
  assert [l.shape for l in logits] == [(2, s, s, 3) for s in (16, 8, 4, 2, 1)]
  assert [d.shape for d in dl] == [(2, s, s, 3, 4) for s in (16, 8, 4, 2, 1)]
  anchors = gen([l.shape[1:3] for l in logits])
  assert [a.shape[0] for a in anchors] == [s * s * 3 for s in (16, 8, 4, 2, 1)]
  # one size per level: the square anchor at P4's first cell is 32 px, centred on (0, 0)
  np.testing.assert_allclose(anchors[2][1], [-16, -16, 16, 16], atol=1e-4)
  with pytest.raises(ValueError, match="one per level"):
    builders.build_rpn(TINY, head="fpn", anchor_sizes=(32, 64, 128))


def _np_conv(x, k, b):
  """Slow 'same' conv: x [N,H,W,Ci], k [kh,kw,Ci,Co]."""
  kh, kw = k.shape[:2]
  ph, pw = kh // 2, kw // 2
  xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  out = np.zeros(x.shape[:3] + (k.shape[-1],))
  for i in range(kh):
    for j in range(kw):
      out += xp[:, i : i + x.shape[1], j : j + x.shape[2]] @ k[i, j]
  return out + b


def test_fpn_matches_numpy_top_down():
  rng = np.random.default_rng(1)
  # res5 3x3 -> res4 6x6 exact doubles; res3 13x13 is not, the upsample clips (as torch nearest
  # to a size would be replaced by the size-divisibility padding in detectron2)
  sizes = {"res2": (26, 8), "res3": (13, 12), "res4": (6, 16), "res5": (3, 20)}
  feats = {k: rng.normal(size=(1, s, s, c)).astype(np.float32) for k, (s, c) in sizes.items()}
  module = fpn.FPN(out_channels=5)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), feats)
  v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), shapes)
  got = jax.jit(module.apply)(v, feats)
  p = jax.tree.map(np.asarray, v["params"])
  prev, want = None, {}
  for lvl in (5, 4, 3, 2):
    lat = _np_conv(
        feats[f"res{lvl}"], p[f"fpn_lateral{lvl}"]["kernel"], p[f"fpn_lateral{lvl}"]["bias"]
    )
    if prev is not None:
      up = prev.repeat(2, 1).repeat(2, 2)
      up = np.pad(
          up,
          (
              (0, 0),
              (0, max(0, lat.shape[1] - up.shape[1])),
              (0, max(0, lat.shape[2] - up.shape[2])),
              (0, 0),
          ),
          mode="edge",
      )
      lat = lat + up[:, : lat.shape[1], : lat.shape[2]]
    prev = lat
    want[f"p{lvl}"] = _np_conv(lat, p[f"fpn_output{lvl}"]["kernel"], p[f"fpn_output{lvl}"]["bias"])
  want["p6"] = want["p5"][:, ::2, ::2]
  for k, w in want.items():
    np.testing.assert_allclose(got[k], w, rtol=1e-4, atol=1e-3, err_msg=k)


def test_rois_pooled_from_their_level_via_multilevel_roi_align(det64, monkeypatch):
  det, v = det64
  calls = []
  real = fpn.multilevel_roi_align

  def spy(*args, **kw):
    calls.append(args[3])
    return real(*args, **kw)

  monkeypatch.setattr(fpn, "multilevel_roi_align", spy)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 64, 64, 3)), jnp.float32)
  # sides 10, 20, 40, 64 with canonical box 32 px at level 4:
  # floor(4 + log2(side / 32)) = 2, 3, 4, 5
  boxes = np.asarray(
      [[[5, 7, 15, 17], [30, 20, 50, 40], [10, 20, 50, 60], [0, 0, 64, 64]]], np.float32
  )

  def features_and_pool(m, im, bx):
    f = m.features(im)
    return f, m.pool(f, bx)

  levels, pooled = jax.jit(lambda v, x, b: det.apply(v, x, b, method=features_and_pool))(
      v, x, jnp.asarray(boxes)
  )
  assert calls == [fpn.ROI_SCALES]
  assert pooled.shape == (1, 4, 7, 7, 32)
  # every box pooled from every level (one compile), then pick by the hand-computed level
  every = jax.jit(
      lambda fs, b: [roi_align(f, b, (7, 7), s, 0, True) for f, s in zip(fs, fpn.ROI_SCALES)]
  )(levels, jnp.asarray(boxes))
  for r, lvl in enumerate((2, 3, 4, 5)):
    side = np.sqrt(np.prod(boxes[0, r, 2:] - boxes[0, r, :2]))
    assert int(np.floor(4 + np.log2(side / 32.0 + 1e-8))) == lvl
    np.testing.assert_allclose(pooled[0, r], every[lvl - 2][0, r], rtol=1e-5, atol=1e-5)
    wrong = every[(lvl - 1) % 4][0, r]  # another level gives something else
    assert np.abs(np.asarray(wrong) - np.asarray(pooled[0, r])).max() > 1e-3


def _shapes_batch(n=4, seed=3):
  world = ShapesWorld(n, image_size=64, seed=seed)
  tf = shapes_world_transforms(image_size=64, max_boxes=4, captions=False)
  recs = [apply_transforms(world[i], tf) for i in range(n)]
  batch = {
      k: np.stack([r[k] for r in recs])
      for k in ("image", "image_size", "boxes", "box_mask", "labels")
  }
  return batch, list(world.concepts)


def _proposals(batch, rng, p=24):
  n = batch["boxes"].shape[0]
  props = np.zeros((n, p, 4), np.float32)
  for i in range(n):
    gts = batch["boxes"][i][batch["box_mask"][i]]
    for k in range(p):
      if k < 4 * len(gts):
        g = gts[k % len(gts)]
        w, h = g[2] - g[0], g[3] - g[1]
        props[i, k] = g + rng.normal(0, 0.1, 4) * [w, h, w, h]
      else:
        c, s = rng.uniform(0, 64, 2), rng.uniform(8, 40, 2)
        props[i, k] = [c[0] - s[0] / 2, c[1] - s[1] / 2, c[0] + s[0] / 2, c[1] + s[1] / 2]
  return np.clip(props, 0, 64)


def test_fpn_detector_and_rpn_training_lower_losses():
  batch, names = _shapes_batch()
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  # detector with fixed proposals (the RoI head path), focal-scaled CE + box L1
  det = builders.build_detector(TINY, head="fpn", fpn=SMALL_FPN)
  v = builders.init_detector(det, 64, seed=0)
  mask = trainable_mask(v, fpn.TRAINABLE_FPN_DETECTOR, (FROZEN_BN_REGEX,))
  assert not any(jax.tree.leaves(mask["params"]["backbone"]["visual"]["layer1"]))
  tx = optax.adam(2e-3)
  state = create_train_state(v, tx, mask)
  step = jax.jit(
      make_detector_step(det, None, None, RoIHeadSettings(batch_size_per_image=32), None, tx, mask),
      donate_argnums=0,
  )
  db = dict(
      jb,
      proposals=jnp.asarray(_proposals(batch, np.random.default_rng(0))),
      proposal_valid=jnp.ones(batch["boxes"].shape[:1] + (24,), bool),
  )
  emb = jnp.asarray(np.random.default_rng(1).normal(size=(len(names), TINY.embed_dim)), jnp.float32)
  hist = []
  # 24 proposals + <= 4 GT < 32 sampled slots: padded zero boxes are in every step, so a NaN
  # gradient from their zero embeddings (see fpn._nonzero_rows) would show up here
  for _ in range(STEPS):
    state, m = step(state, db, {"text_emb": emb})
    hist.append({k: float(x) for k, x in m.items()})
  print(
      f"fpn detector loss {hist[0]['loss']:.3f} -> {hist[-1]['loss']:.3f} "
      f"(cls {hist[0]['loss_cls']:.3f} -> {hist[-1]['loss_cls']:.3f})"
  )
  assert np.isfinite(hist[-1]["loss"])
  assert hist[-1]["loss_cls"] < 0.5 * hist[0]["loss_cls"]
  assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]

  # RPN over P2..P6, class-agnostic
  rb = dict(jb, labels=jnp.where(jb["box_mask"], 0, -1))
  rpn, gen = builders.build_rpn(TINY, head="fpn", anchor_sizes=(8, 16, 24, 32, 48), fpn_channels=32)
  rv = builders.init_rpn(rpn, 64, seed=0)
  rmask = trainable_mask(rv, fpn.TRAINABLE_FPN_RPN, (FROZEN_BN_REGEX,))
  rtx = optax.adam(3e-3)
  rstate = create_train_state(rv, rtx, rmask)
  rstep = jax.jit(
      make_rpn_step(rpn, gen, RPNSettings(batch_size_per_image=64), rtx, rmask), donate_argnums=0
  )
  rh = []
  for _ in range(STEPS):
    rstate, m = rstep(rstate, rb)
    rh.append({k: float(x) for k, x in m.items()})
  print(f"fpn rpn loss {rh[0]['loss']:.3f} -> {rh[-1]['loss']:.3f}")
  assert rh[-1]["loss_rpn_cls"] < 0.7 * rh[0]["loss_rpn_cls"]


def test_config_selects_head(tmp_path):
  cfg = finetune_config.get_config("shapes")
  assert cfg.model.head == "c4"
  assert isinstance(builders.detector_from_config(cfg, TINY), OpenVocabFasterRCNN)
  cfg.model.head = "fpn"
  det = builders.detector_from_config(cfg, TINY)
  assert isinstance(det, fpn.FPNFasterRCNN)
  assert (det.fpn_channels, det.pooler_resolution, det.fc_dim) == (256, 7, 1024)
  assert det.embed_dim == TINY.embed_dim
  cfg.model.head = "fpn5"
  with pytest.raises(ValueError, match="model.head"):
    builders.detector_from_config(cfg, TINY)
  # an exported FPN detector rebuilds as one
  export.export_model(
      str(tmp_path),
      {"params": {}},
      {
          "kind": "detector",
          "clip_config": TINY.to_dict(),
          "pooler_resolution": 4,
          "head": "fpn",
          "fpn": SMALL_FPN,
      },
  )
  module, _, _ = export.load_export(str(tmp_path))
  assert isinstance(module, fpn.FPNFasterRCNN) and module.fpn_channels == 32
