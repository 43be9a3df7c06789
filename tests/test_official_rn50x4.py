"""RN50x4 through every path: what the official scripts set by flag for it (`RESNETS.DEPTH 200`,
`ROI_BOX_HEAD.POOLER_RESOLUTION 18`, `TEXT_EMB_DIM 640`; 288 px input, attention-pool grid 9) is
derived here from the checkpoint's shapes.

Default tests, shape-only (every array a zero-stride view, nothing allocated): the official
pretrained layout (`backbone.*`, `lang_encoder.*` with RN50x4's shapes) gives the RN50x4 config
through the inference `clip.load` runs, the fine-tuned detector layout through the one the
detector export runs; the detector built at the derived pooler size gives 640-d region
embeddings (jax.eval_shape); the fine-tuning job derives pooler 18 from the checkpoint; 1024-d
embedding files are refused for it by name. Slow: random RN50x4 weights saved with torch.save
in both layouts, loaded, exported and run by the zero-shot detector and the extraction tool.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

import official_release as release  # noqa: E402

from regionclip_jax.detection import builders, export, run  # noqa: E402
from regionclip_jax.models.checkpoints import CheckpointError  # noqa: E402
from regionclip_jax.models.checkpoints.regionclip import regionclip_to_openai  # noqa: E402
from regionclip_jax.models.checkpoints.regionclip_detector import _config  # noqa: E402
from regionclip_jax.models.clip import get_config  # noqa: E402
from regionclip_jax.models.clip_model import param_shapes  # noqa: E402
from regionclip_jax.models.convert_openai import (  # noqa: E402
    config_from_state_dict,
    state_dict_from_params,
)

RN50X4 = get_config("RN50x4")


def _shape_only(tree):
  """Zero-stride float32 views of each leaf's shape (no memory behind them)."""
  return jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), tree)


def _official_pretrained_keys() -> dict:
  """The RN50x4 pretrained checkpoint's state dict (`regionclip_pretrained-cc_rn50x4.pth`
  names), shape-only."""
  sd = state_dict_from_params(_shape_only(param_shapes(RN50X4)), num_batches_tracked=False)
  out = {}
  for k, v in sd.items():
    if k.startswith("visual."):
      out["backbone." + k[len("visual.") :]] = v
    elif k != "logit_scale":
      out["lang_encoder." + k] = v
  return out


def test_pretrained_layout_gives_rn50x4():
  sd = _official_pretrained_keys()
  assert sd["backbone.attnpool.positional_embedding"].shape == (9 * 9 + 1, 2560)
  cfg = config_from_state_dict(regionclip_to_openai(sd, where="rn50x4.pth"))
  assert cfg.vision == RN50X4.vision and cfg.text == RN50X4.text
  assert tuple(cfg.vision.layers) == (4, 6, 10, 6)  # the blocks of the official DEPTH 200
  assert (cfg.embed_dim, cfg.image_size, cfg.vision.pool_grid) == (640, 288, 9)


def test_detector_layout_gives_rn50x4_and_pooler_18():
  sd = _official_pretrained_keys()
  vis = regionclip_to_openai({k: v for k, v in sd.items() if k.startswith("backbone.")})
  vis = {k: v for k, v in vis.items() if k.startswith("visual.")}
  cfg = _config(vis, vis["visual.attnpool.c_proj.weight"].shape[0], "ft_rn50x4.pth")
  assert cfg.vision == RN50X4.vision and cfg.embed_dim == 640
  # the export's pooler (export_regionclip_detector): 2 x the attention-pool grid
  det = builders.build_detector(cfg, freeze_at=0, pooler_resolution=2 * cfg.vision.pool_grid)
  assert det.pooler_resolution == 18
  images = jax.ShapeDtypeStruct((1, 800, 800, 3), jnp.float32)
  boxes = jax.ShapeDtypeStruct((1, 5, 4), jnp.float32)
  variables = jax.eval_shape(det.init, jax.random.PRNGKey(0), images, boxes)
  assert variables["params"]["bbox_pred"]["kernel"].shape == (640, 4)
  feats, deltas = jax.eval_shape(det.apply, variables, images, boxes)
  assert feats.shape == (1, 5, 640) and deltas.shape == (1, 5, 4)


def test_fine_tuning_derives_pooler_18_from_the_checkpoint(monkeypatch):
  from configs import finetune as finetune_config

  loaded = []
  monkeypatch.setattr(
      builders, "load_clip_params", lambda path, source=None: loaded.append(path) or (RN50X4, None)
  )
  cfg = finetune_config.get_config("coco_transfer")
  cfg.model.init_checkpoint = "regionclip_pretrained-cc_rn50x4.pth"
  assert run.with_pooler_resolution(cfg).model.pooler_resolution == 18
  assert loaded == ["regionclip_pretrained-cc_rn50x4.pth"]


def test_rn50_embeddings_are_refused_for_rn50x4(tmp_path):
  path = str(tmp_path / "coco_65_cls_emb.pth")
  torch.save(torch.randn(65, 1024), path)
  with pytest.raises(CheckpointError) as info:
    builders.read_embeddings(path, 65, RN50X4.embed_dim)
  msg = str(info.value)
  assert path in msg and "[65, 640]" in msg and "1024-d = RN50 text embeddings" in msg


# ----------------------------------------------------------------------------- slow: real sizes


def _random_state(shapes, rng) -> dict:
  """Small random weights (frozen-BN variances 1) for a tree of shapes -> OpenAI state dict."""
  leaves = {}
  for path, s in jax.tree_util.tree_leaves_with_path(shapes):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']") or name.endswith("['scale']"):
      leaves[path] = np.ones(s.shape, np.float32)
    else:
      leaves[path] = (rng.standard_normal(s.shape, np.float32) * 0.02).astype(np.float32)
  tree = jax.tree_util.tree_map_with_path(lambda p, _: leaves[p], shapes)
  return state_dict_from_params(tree, num_batches_tracked=False)


@pytest.mark.slow
def test_rn50x4_files_through_every_path(tmp_path):
  from configs import extract_region_features as extract_config
  from regionclip_jax.models.clip import load
  from regionclip_jax.tools import extract_region_features
  from regionclip_jax.tools.zero_shot import ZeroShotDetector

  rng = np.random.default_rng(0)
  sd = _random_state(param_shapes(RN50X4), rng)
  pre = {}
  for k, v in sd.items():
    if k.startswith("visual."):
      pre["backbone." + k[len("visual.") :]] = torch.from_numpy(v)
    elif k != "logit_scale":
      pre["lang_encoder." + k] = torch.from_numpy(v)
  pretrained = str(tmp_path / "regionclip_pretrained-cc_rn50x4.pth")
  torch.save({"model": pre}, pretrained)
  assert load(pretrained).config.vision == RN50X4.vision
  # zero-shot: the detector the checkpoint implies, 640-d region embeddings of GT boxes
  zs = ZeroShotDetector(pretrained, test_size=288, max_size=384, score_thresh=0.0, topk=5)
  assert zs.predictor.det.pooler_resolution == 18 and zs.clip_config.embed_dim == 640
  image = release.photo("chelsea")[::2, ::2]
  emb = zs.text_embeddings(["cat", "dog"])
  assert emb.shape == (2, 640)
  d = zs.detect(image, emb, boxes=np.asarray([[0, 0, 225, 150], [20, 20, 120, 100]], np.float32))
  assert len(d["boxes"]) > 0
  # the fine-tuned detector layout -> an export at pooler 18 that the same detector runs
  det_sd = {k: v for k, v in pre.items() if k.startswith("backbone.")}
  p = "roi_heads.box_predictor."
  det_sd[p + "cls_score.weight"] = torch.randn(48, 640)
  det_sd[p + "test_cls_score.weight"] = torch.randn(65, 640)
  det_sd[p + "cls_bg_score.weight"] = torch.zeros(1, 640)
  det_sd[p + "bbox_pred.weight"] = torch.randn(4, 640) * 0.01
  det_sd[p + "bbox_pred.bias"] = torch.zeros(4)
  detector = str(tmp_path / "regionclip_finetuned-coco_rn50x4.pth")
  torch.save({"model": det_sd}, detector)
  out = str(tmp_path / "export")
  meta = export.export_regionclip_detector(detector, out)
  assert meta["pooler_resolution"] == 18 and meta["clip_config"]["embed_dim"] == 640
  ft = ZeroShotDetector(out, test_size=288, max_size=384, score_thresh=0.0, topk=5)
  emb = np.load(os.path.join(out, "class_embeddings.npy"))
  assert emb.shape == (65, 640)
  assert len(ft.detect(image, emb, boxes=np.asarray([[0, 0, 225, 150]], np.float32))["boxes"])
  # the extraction tool on a C4 offline RPN's proposals
  rpn = str(tmp_path / "rpn_coco_48.pth")
  torch.save({"model": release.rpn_state("c4")}, rpn)
  images = tmp_path / "images"
  images.mkdir()
  Image.fromarray(image).save(images / "chelsea.jpg")
  cfg = extract_config.get_config()
  cfg.extract.update(
      checkpoint=pretrained,
      rpn=rpn,
      images=str(images),
      output=str(tmp_path / "feats"),
      test_size=288,
      max_size=384,
      num_regions=20,
  )
  assert extract_region_features.run(cfg)["written"] == 1
  with np.load(tmp_path / "feats" / "chelsea.npz") as z:
    assert z["feats"].shape == (len(z["boxes"]), 640)
  with open(os.path.join(out, "model.json")) as f:
    assert json.load(f)["clip_config"]["vision"]["layers"] == [4, 6, 10, 6]
