"""The configs/finetune.py shapes presets end to end: offline RPN, then base-class fine-tuning on
the shared train loop (checkpoint + resume + export), then AP50 novel / base / all. Slow."""

import json
import os

import pytest


@pytest.mark.slow
def test_shapes_rpn_then_finetune_then_resume(tmp_path):
  from configs import finetune as F
  from regionclip_jax.detection import finetune

  c = F.get_config("rpn_shapes")
  c.train.num_steps, c.train.batch_size, c.train.log_every, c.data.num_train = 20, 8, 10, 64
  out = finetune.train_rpn(c, str(tmp_path / "rpn"))
  assert os.path.isfile(os.path.join(out["export"], "model.json"))

  c = F.get_config("shapes")
  c.train.num_steps, c.train.batch_size, c.train.log_every = 20, 8, 10
  c.train.checkpoint_every = 10
  c.data.num_train, c.data.num_test, c.test.batch_size = 64, 16, 8
  c.rpn.checkpoint = str(tmp_path / "rpn")
  # from scratch there is no pretrained init to ensemble with: refused, not silently random
  with pytest.raises(ValueError, match="init_checkpoint is empty"):
    finetune.train_detector(c, str(tmp_path / "det"))
  c.test.pretrained_score_weights = ()
  m = finetune.train_detector(c, str(tmp_path / "det"))
  for k in ("AP50_novel", "AP50_base", "AP50_all"):
    assert k in m
  saved = json.load(open(tmp_path / "det" / "metrics.json"))
  assert saved["num_categories_with_gt"]["novel"] > 0
  # a second run resumes at the last checkpoint instead of training again
  c.train.num_steps = 20
  finetune.train_detector(c, str(tmp_path / "det"))
  assert sorted(os.listdir(tmp_path / "det" / "checkpoints"))[-1] == "20"


def test_configs_presets_build():
  from configs import finetune as F, zero_shot as Z

  for name in F.PRESETS:
    c = F.get_config(name)
    assert c.task == "detection" and c.stage in ("rpn", "finetune")
  assert F.get_config().data.name == "shapes_world"
  lv = F.get_config("lvis_rn50")
  assert lv.roi_heads.focal_gamma is None and lv.roi_heads.bg_weight == 0.8
  co = F.get_config("coco_ovd_rn50")
  assert (co.roi_heads.focal_gamma, co.roi_heads.bg_weight, co.roi_heads.batch_size_per_image) == (
      0.5,
      0.2,
      512,
  )
  assert F.get_config("coco_ovd_rn50x4").model.pooler_resolution == 18
  with pytest.raises(ValueError, match="configs/finetune.py"):
    F.get_config("nope")
  for name in Z.PRESETS:
    assert Z.get_config(name).stage == "zero_shot"
