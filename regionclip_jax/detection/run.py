"""`main.py` entry for task "detection": dispatches on `config.stage`.

stage "rpn"       -> detection.finetune.train_rpn      (offline class-agnostic RPN on base boxes)
stage "finetune"  -> detection.finetune.train_detector (open-vocabulary detector on base classes)
stage "zero_shot" -> tools.zero_shot.run               (no fine-tuning; folder or COCO/LVIS json)
"""

from __future__ import annotations

import os
import tempfile

STAGES = ("rpn", "finetune", "zero_shot")


def run(config, workdir: str | None = None):
  stage = config.get("stage")
  if stage not in STAGES:
    raise ValueError(f"detection/run.py: config.stage={stage!r} is not one of {STAGES}")
  if not workdir:
    workdir = config.get("workdir") or tempfile.mkdtemp(prefix=f"regionclip_{stage}_")
    print(f"[detection] workdir {workdir}", flush=True)
  os.makedirs(workdir, exist_ok=True)
  if stage == "zero_shot":
    from regionclip_jax.tools import zero_shot

    return zero_shot.run(config, workdir)
  from regionclip_jax.detection import finetune

  if stage == "rpn":
    return finetune.train_rpn(config, workdir)
  return finetune.train_detector(config, workdir)


def pretrain_proposal_fn(
    rpn_path: str,
    *,
    post_nms_topk: int = 300,
    nms_thresh: float = 0.5,
    num_sampled: int = 100,
    pre_nms_topk: int = 6000,
):
  """Proposals for RegionCLIP pretraining from the frozen offline RPN (official: post-NMS top 300
  at NMS 0.5, then `num_sampled` drawn at random among the valid ones per image).

  -> `fn(key, batch) -> (boxes [N, num_sampled, 4], valid [N, num_sampled])`, the signature of
  `pretrain.proposals.make_proposal_fn(kind="rpn", rpn_fn=...)`. Traceable (use inside jit).
  """
  import jax
  import jax.numpy as jnp
  from regionclip_jax.detection.finetune import load_rpn
  from regionclip_jax.detection.settings import RPNSettings
  from regionclip_jax.detection.train_lib import rpn_proposals

  rpn, gen, variables = load_rpn(rpn_path)
  settings = RPNSettings(nms_thresh=nms_thresh)

  def fn(key, batch):
    images = batch["image"]
    n, h, w = images.shape[:3]
    hw = batch.get("image_size")
    hw = jnp.broadcast_to(jnp.asarray([h, w], jnp.float32), (n, 2)) if hw is None else hw
    boxes, _, valid = rpn_proposals(
        rpn, gen, settings, variables, images, hw.astype(jnp.float32), pre_nms_topk, post_nms_topk
    )
    # random subset of the valid proposals: top-k of random keys, invalid ones ranked last
    r = jax.random.uniform(key, valid.shape)
    _, idx = jax.lax.top_k(jnp.where(valid, r, -1.0), num_sampled)
    take = lambda a, i: a[i]
    return jax.vmap(take)(boxes, idx), jax.vmap(take)(valid, idx)

  return fn
