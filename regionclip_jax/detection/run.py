"""`main.py` entry for task "detection": dispatches on `config.stage`.

stage "rpn"       -> detection.finetune.train_rpn      (offline class-agnostic RPN on base boxes)
stage "finetune"  -> detection.finetune.train_detector (open-vocabulary detector on base classes)
                     With `rpn.checkpoint` empty and a `rpn_stage` section (configs/finetune.py:
                     custom), the RPN is trained first into <workdir>/rpn (skipped when its export
                     exists) on the same data with `rpn_stage.train` / `rpn_stage.optimizer`; with
                     `test.proposal_recall`, the RPN's class-agnostic AR@100/300/1000 on the test
                     split's base and novel boxes is measured before the detector trains and
                     added to <workdir>/metrics.json.

Zero-shot inference (configs/zero_shot.py) is a task of its own, "zero_shot"
(regionclip_jax.tools.zero_shot.run).
"""

from __future__ import annotations

import math
import os
import tempfile

import jax

from regionclip_jax.data.validation import report_all
from regionclip_jax.detection import builders, export, finetune
from regionclip_jax.detection.data import data_for, pad_size
from regionclip_jax.detection.evaluate import evaluate_proposals
from regionclip_jax.detection.inference import make_proposal_fn
from regionclip_jax.models.clip import CLIPConfig, get_config as clip_preset
from regionclip_jax.train.compile_cache import compilation_cache

STAGES = ("rpn", "finetune")


def run(config, workdir: str | None = None):
  stage = config.get("stage")
  if stage == "zero_shot":
    # the stage moved out of this task; an old config still names it
    raise ValueError(
        f"{__name__}: config.stage='zero_shot' is no longer a stage of task 'detection'; "
        "run it as task 'zero_shot' (configs/zero_shot.py sets it; the tool: "
        "python -m regionclip_jax.tools.zero_shot)"
    )
  if stage not in STAGES:
    raise ValueError(f"{__name__}: config.stage={stage!r} is not one of {STAGES}")
  if not workdir:
    workdir = config.get("workdir") or tempfile.mkdtemp(prefix=f"regionclip_{stage}_")
    print(f"[detection] workdir {workdir}", flush=True)
  os.makedirs(workdir, exist_ok=True)
  with compilation_cache(os.path.join(workdir, "xla_cache")):  # a resumed job skips compiling
    if stage == "rpn":
      return finetune.train_rpn(config, workdir)
    return _finetune(config, workdir)


def rpn_stage_config(config):
  """The stage="rpn" config of a finetune job with a `rpn_stage` section: the job's own data,
  model and `rpn` settings (the base boxes of the same json), `rpn_stage`'s train / optimizer."""
  rc = config.copy_and_resolve_references()
  rc.stage = "rpn"
  rc.train = config.rpn_stage.train.copy_and_resolve_references()
  rc.optimizer = config.rpn_stage.optimizer.copy_and_resolve_references()
  return rc


def proposal_recall(config, test_data=None) -> dict:
  """AR@100 / 300 / 1000 (percent, class-agnostic, pycocotools) of the RPN `rpn.checkpoint` on
  the test split's base and novel boxes, with the test-time top-k the detector will use.
  `test_data`: `data_for(config, train=False)` when already read."""
  test_src, test_tf, names, base, novel = test_data or data_for(config, train=False)
  rpn, gen, rpn_vars = export.load_rpn(config.rpn.checkpoint, config.rpn.get("checkpoint_arch", ""))
  fn = make_proposal_fn(rpn, gen, builders.rpn_settings(config), training=False)
  out = evaluate_proposals(
      lambda images, sizes: fn(rpn_vars, images, sizes),
      test_src,
      test_tf,
      names,
      base,
      novel,
      batch_size=config.test.batch_size,
  )
  fmt = lambda part: " / ".join(f"{out[f'AR@{m}_{part}']:.1f}" for m in (100, 300, 1000))
  print(
      f"[finetune] proposal recall of {config.rpn.checkpoint} (class-agnostic, "
      f"{len(test_src)} test images, pad {pad_size(config)}): AR@100 / 300 / 1000 base "
      f"{fmt('base')} ({out['num_gt_base']} boxes), novel {fmt('novel')} "
      f"({out['num_gt_novel']} boxes)",
      flush=True,
  )
  return out


def with_pooler_resolution(config):
  """-> config, or a copy whose model.pooler_resolution 0 is resolved to 2 x the attention-pool
  grid of the init checkpoint's CLIP ResNet (native input / 32): 14 for RN50, 18 for RN50x4, 4
  for tiny_rn, as the official configs set it per backbone."""
  if config.model.pooler_resolution:
    return config
  path = config.model.init_checkpoint
  if path and export.is_export(path):
    clip_cfg = CLIPConfig.from_dict(export.read_meta(path, "detector")["clip_config"])
  elif path:
    clip_cfg, _ = builders.load_clip_params(path, config.model.init_source or None)
  else:
    clip_cfg = clip_preset(config.model.clip_preset)
  if not clip_cfg.is_resnet:
    raise ValueError(f"{__name__}: the detector needs a CLIP ResNet; {path!r} is a ViT")
  cfg = config.copy_and_resolve_references()
  cfg.model.pooler_resolution = 2 * (clip_cfg.vision.image_size // 32)
  print(
      f"[finetune] model.pooler_resolution {cfg.model.pooler_resolution} (2 x the attention-pool "
      f"grid of {path or config.model.clip_preset})",
      flush=True,
  )
  return cfg


def _finetune(config, workdir: str) -> dict:
  """Stage "finetune": [RPN into <workdir>/rpn], [its proposal recall], the detector."""
  cfg = with_pooler_resolution(config)
  test_data = None
  if "rpn_stage" in cfg or cfg.test.proposal_recall:
    # the user's files and class lists are checked before anything trains
    data_for(cfg, train=True)
    test_data = data_for(cfg, train=False)
  if not cfg.rpn.checkpoint and "rpn_stage" in cfg:
    rpn_dir = os.path.join(workdir, "rpn")
    if finetune.rpn_trained(rpn_dir):
      print(f"[finetune] RPN found at {rpn_dir}", flush=True)
    else:
      rc = rpn_stage_config(cfg)
      print(
          f"[finetune] rpn.checkpoint is empty: training a class-agnostic RPN on the base boxes "
          f"({rc.train.num_steps} steps) into {rpn_dir}",
          flush=True,
      )
      finetune.train_rpn(rc, rpn_dir)
    cfg = cfg.copy_and_resolve_references()
    cfg.rpn.checkpoint = rpn_dir
  recall = proposal_recall(cfg, test_data) if cfg.test.proposal_recall else None
  if recall is None:
    return finetune.train_detector(cfg, workdir)
  metrics = finetune.train_detector(
      cfg, workdir, lambda: {**recall, "data_issues": report_all().splitlines()}
  )
  issues = "\n".join(metrics["data_issues"])
  path = os.path.join(workdir, "metrics.json")
  if jax.process_index() == 0:
    show = lambda k: "nan" if math.isnan(metrics[k]) else f"{metrics[k]:.2f}"
    lines = [
        f"  {p:5s}  AP50 {show(f'AP50_{p}')}  AP {show(f'AP_{p}')}"
        for p in ("novel", "base", "all")
    ]
    lines += [
        f"  {p:5s}  " + "  ".join(f"AR@{m} {show(f'AR@{m}_{p}')}" for m in (100, 300, 1000))
        for p in ("base", "novel")
    ]
    print(f"[finetune] results ({path}):\n" + "\n".join(lines), flush=True)
    if issues:
      print(f"[finetune] data records skipped or repaired (data.on_error='skip'):\n{issues}")
  return metrics
