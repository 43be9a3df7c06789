"""The detector learns a handful of shapes-world images (AP50 >= 0.9 by pycocotools), and its
vocabulary can be swapped at test time without recompiling the backbone.

Proposals are fixed (jittered ground truth + random boxes) so that this exercises the RoI head,
its sampling, losses and post-processing; the RPN has its own test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from regionclip_jax.data.shapes_world import ShapesWorld
from regionclip_jax.data.transforms import apply_transforms, shapes_world_transforms
from regionclip_jax.detection import builders
from regionclip_jax.detection.evaluate import records_to_coco_gt
from regionclip_jax.detection.finetune import TRAINABLE_DETECTOR
from regionclip_jax.detection.predictor import DetectorPredictor
from regionclip_jax.detection.settings import InferenceSettings, RoIHeadSettings
from regionclip_jax.detection.train_lib import make_detector_step
from regionclip_jax.evaluation.coco_eval import evaluate_coco
from regionclip_jax.evaluation.detections_io import detections_to_coco
from regionclip_jax.models.clip import FROZEN_BN_REGEX, get_config
from regionclip_jax.train.optimizer import trainable_mask
from regionclip_jax.train.state import create_train_state

N, P, STEPS = 4, 32, 90


def _proposals(batch, rng):
  props = np.zeros((N, P, 4), np.float32)
  for i in range(N):
    k = 0
    for g in batch["boxes"][i][batch["box_mask"][i]]:
      w, h = g[2] - g[0], g[3] - g[1]
      for _ in range(5):
        props[i, k] = g + rng.normal(0, 0.08, 4) * [w, h, w, h]
        k += 1
    while k < P:
      c, s = rng.uniform(0, 64, 2), rng.uniform(8, 40, 2)
      props[i, k] = [c[0] - s[0] / 2, c[1] - s[1] / 2, c[0] + s[0] / 2, c[1] + s[1] / 2]
      k += 1
  return np.clip(props, 0, 64)


@pytest.fixture(scope="module")
def trained():
  world = ShapesWorld(N, image_size=64, seed=3)
  tf = shapes_world_transforms(image_size=64, max_boxes=4, captions=False)
  recs = [apply_transforms(world[i], tf) for i in range(N)]
  batch = {
      k: np.stack([r[k] for r in recs])
      for k in ("image", "image_size", "boxes", "box_mask", "labels", "image_id")
  }
  batch["proposals"] = _proposals(batch, np.random.default_rng(0))
  batch["proposal_valid"] = np.ones((N, P), bool)
  names = list(world.concepts)
  emb = np.random.default_rng(1).normal(size=(len(names), 64)).astype(np.float32)
  det = builders.build_detector(get_config("tiny_rn"), pooler_resolution=4, freeze_at=2)
  variables = builders.init_detector(det, 64, seed=0)
  mask = trainable_mask(variables, TRAINABLE_DETECTOR, (FROZEN_BN_REGEX,))
  tx = optax.adam(2e-3)
  state = create_train_state(variables, tx, mask)
  step = jax.jit(
      make_detector_step(det, None, None, RoIHeadSettings(batch_size_per_image=32), None, tx, mask),
      donate_argnums=0,
  )
  train_batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "image_id"}
  frozen = {"text_emb": jnp.asarray(emb)}
  first = None
  for _ in range(STEPS):
    state, m = step(state, train_batch, frozen)
    first = first if first is not None else float(m["loss"])
  pred = DetectorPredictor(
      det, state.params, InferenceSettings(score_thresh=0.05, topk=10, max_candidates=200)
  )
  return dict(batch=batch, names=names, emb=emb, pred=pred, first=first, last=float(m["loss"]))


def _ap50(t, out):
  cats = [{"id": i + 1, "name": n} for i, n in enumerate(t["names"])]
  gt = records_to_coco_gt([t["batch"]], t["names"])
  dets = detections_to_coco(
      t["batch"]["image_id"], out["boxes"], out["scores"], out["classes"], out["valid"], cats
  )
  return evaluate_coco(gt, dets, split=None)["AP50"] / 100.0


def _predict(t, emb):
  b = t["batch"]
  return t["pred"](
      b["image"], b["image_size"], emb, boxes=b["proposals"], box_valid=b["proposal_valid"]
  )


def test_overfit_reaches_ap50(trained):
  assert trained["last"] < 0.3 * trained["first"]
  ap50 = _ap50(trained, _predict(trained, trained["emb"]))
  print(f"overfit AP50 {ap50:.3f} loss {trained['first']:.3f} -> {trained['last']:.3f}")
  assert ap50 >= 0.9


def test_vocabulary_swap_without_backbone_recompile(trained):
  t = trained
  base = _predict(t, t["emb"])
  regions = t["pred"]._regions
  compiled = regions._cache_size()
  # permuted vocabulary: same detections, class ids permuted
  perm = np.random.default_rng(5).permutation(len(t["names"]))
  out = _predict(t, t["emb"][perm])
  np.testing.assert_array_equal(out["valid"], base["valid"])
  v = base["valid"]
  # new class j is old class perm[j]
  np.testing.assert_array_equal(perm[out["classes"][v]], base["classes"][v])
  np.testing.assert_allclose(out["scores"][v], base["scores"][v], rtol=1e-5, atol=1e-6)
  # a smaller vocabulary (a new class count) without the classes present: different answers,
  # and still no new compile of the backbone / RoI-head program
  present = set(np.unique(t["batch"]["labels"][t["batch"]["box_mask"]]).tolist())
  others = [i for i in range(len(t["names"])) if i not in present][:5]
  out2 = _predict(t, t["emb"][others])
  assert regions._cache_size() == compiled
  assert out2["classes"].max() < len(others)
  assert _ap50(t, base) > 0.9
