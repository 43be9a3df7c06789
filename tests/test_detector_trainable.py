"""What detector fine-tuning updates: the official FREEZE_AT 2 set, less `model.frozen`."""

import re

import jax
import pytest
from flax import traverse_util

from configs import finetune as finetune_configs
from regionclip_jax.detection import builders
from regionclip_jax.detection.finetune import detector_trainable_mask
from regionclip_jax.models.clip import get_config


@pytest.fixture(scope="module")
def variables():
  det = builders.build_detector(get_config("tiny_rn"), pooler_resolution=4, freeze_at=2)
  return builders.init_detector(det, 64, seed=0)


def _trained(cfg, variables) -> set[str]:
  flat = traverse_util.flatten_dict(
      jax.tree.map(bool, detector_trainable_mask(cfg, variables)["params"]), sep="/"
  )
  return {k for k, v in flat.items() if v}


def test_model_frozen_keeps_the_matched_parameters_at_their_init(variables):
  cfg = finetune_configs.get_config("shapes")
  default = _trained(cfg, variables)
  # official set: res3-res5 convs, the attention pool and the box deltas; never stem / res2 / BN
  assert any("attnpool/" in k for k in default) and any("bbox_pred/" in k for k in default)
  assert not any(
      re.search(r"/layer1/|visual/conv\d/|(^|/)(bn\d|downsample_bn)/", k) for k in default
  )
  cfg.model.frozen = ("attnpool/",)
  frozen = _trained(cfg, variables)
  assert not any("attnpool/" in k for k in frozen)
  assert frozen == {k for k in default if "attnpool/" not in k}
  cfg.model.frozen = (r"backbone/visual/layer[23]/",)  # only the RoI head and box deltas train
  head = _trained(cfg, variables)
  assert head and all("/layer4/" in k or "attnpool/" in k or "bbox_pred/" in k for k in head)


def test_model_frozen_pattern_that_matches_nothing_trainable_is_an_error(variables):
  cfg = finetune_configs.get_config("shapes")
  cfg.model.frozen = ("atnpool/",)
  with pytest.raises(ValueError, match=r"model\.frozen pattern 'atnpool/' matches no trainable"):
    detector_trainable_mask(cfg, variables)
  cfg.model.frozen = ("/layer1/",)  # already frozen by FREEZE_AT 2: freezes nothing more
  with pytest.raises(ValueError, match="matches no trainable"):
    detector_trainable_mask(cfg, variables)
