"""The class-agnostic RPN trains on base boxes: losses fall and the top proposals find the boxes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from regionclip_jax.data.shapes_world import ShapesWorld
from regionclip_jax.data.transforms import apply_transforms, shapes_world_transforms
from regionclip_jax.detection import builders, export
from regionclip_jax.detection.data import BaseLabelMap
from regionclip_jax.detection.finetune import TRAINABLE_RPN
from regionclip_jax.detection.settings import RPNSettings
from regionclip_jax.detection.inference import make_proposal_fn
from regionclip_jax.detection.train_lib import make_rpn_step
from regionclip_jax.models.clip import FROZEN_BN_REGEX, get_config
from regionclip_jax.ops.boxes import pairwise_iou
from regionclip_jax.train.optimizer import trainable_mask
from regionclip_jax.train.state import create_train_state

N, STEPS, TOP = 4, 80, 20


def _recall(boxes, valid, batch):
  hit = tot = 0
  for i in range(N):
    gt = batch["boxes"][i][batch["box_mask"][i]]
    iou = np.asarray(pairwise_iou(jnp.asarray(gt), boxes[i][:TOP]))
    iou = np.where(np.asarray(valid[i][:TOP])[None], iou, 0.0)
    hit += int((iou.max(1) >= 0.5).sum())
    tot += len(gt)
  return hit / tot


def test_rpn_learns_base_boxes_class_agnostic(tmp_path):
  world = ShapesWorld(N, image_size=64, seed=11)
  tf = shapes_world_transforms(image_size=64, max_boxes=4, captions=False)
  # class-agnostic on base classes: novel boxes are masked out, every base box is label 0
  lookup = [0 if n in world.base_names else -1 for n in world.concepts]
  recs = [BaseLabelMap(lookup)(apply_transforms(world[i], tf)) for i in range(N)]
  batch = {
      k: np.stack([r[k] for r in recs])
      for k in ("image", "image_size", "boxes", "box_mask", "labels")
  }
  novel = [world.concepts.index(n) for n in world.novel_names]
  raw = [world[i]["labels"] for i in range(N)]
  assert int(batch["box_mask"].sum()) == sum(int(np.isin(l, novel, invert=True).sum()) for l in raw)
  rpn, gen = builders.build_rpn(get_config("tiny_rn"), anchor_sizes=(12, 20, 32, 48))
  variables = builders.init_rpn(rpn, 64, seed=0)
  settings = RPNSettings(batch_size_per_image=64, pre_nms_topk_test=192, post_nms_topk_test=20)
  mask = trainable_mask(variables, TRAINABLE_RPN, (FROZEN_BN_REGEX,))
  tx = optax.adam(3e-3)
  state = create_train_state(variables, tx, mask)
  step = jax.jit(make_rpn_step(rpn, gen, settings, tx, mask), donate_argnums=0)
  proposals = make_proposal_fn(rpn, gen, settings, training=False)
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  b0, _, v0 = proposals(state.params, jb["image"], jb["image_size"])
  before = _recall(np.asarray(b0), np.asarray(v0), batch)
  hist = []
  for _ in range(STEPS):
    state, m = step(state, jb)
    hist.append({k: float(v) for k, v in m.items()})
  b1, l1, v1 = proposals(state.params, jb["image"], jb["image_size"])
  after = _recall(np.asarray(b1), np.asarray(v1), batch)
  print(
      f"rpn recall@{TOP} {before:.2f} -> {after:.2f}; loss {hist[0]['loss']:.3f} -> {hist[-1]['loss']:.3f}"
  )
  assert hist[-1]["loss_rpn_cls"] < 0.5 * hist[0]["loss_rpn_cls"]
  assert after >= 0.85 and after > before + 0.3
  assert b1.shape == (N, 20, 4) and l1.shape == (N, 20)

  # the trained RPN as the pretraining proposal source (official: top 300 at NMS 0.5, 100 random)
  from regionclip_jax.pretrain.proposals import rpn_proposal_fn

  export.export_model(
      str(tmp_path / "rpn" / "export"),
      state.params,
      {
          "kind": "rpn",
          "clip_config": get_config("tiny_rn").to_dict(),
          "anchor_sizes": [12, 20, 32, 48],
          "aspect_ratios": [0.5, 1.0, 2.0],
          "stride": 16,
      },
  )
  fn = jax.jit(rpn_proposal_fn(str(tmp_path / "rpn"), post_nms_topk=30, num_sampled=8))
  boxes, valid = fn(jax.random.PRNGKey(0), {"image": jb["image"], "image_size": jb["image_size"]})
  assert boxes.shape == (N, 8, 4) and valid.shape == (N, 8) and bool(valid.all())
