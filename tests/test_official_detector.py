"""Official RegionCLIP fine-tuned detectors (`regionclip_finetuned-coco_rn50.pth` layout) imported
into our detector export, and the imported detector against the official modules.

Import: random weights in the official key layout (built here with torch, saved with torch.save)
-> `detect_kind` -> `export.export_regionclip_detector` -> `load_export` / `ZeroShotDetector`;
layouts our detector cannot compute are refused by name.

Parity: the official modules of the COCO detector (`CLIP_fast_rcnn_R_50_C4_ovd.yaml`):
`clip_backbone.ModifiedResNet` (a tiny one: one block per stage, width 16), `poolers.ROIPooler`
(ROIAlignV2 on res4), `backbone.layer4` + `backbone.attnpool` per crop (`CLIPRes5ROIHeads.
_shared_roi_transform`), `fast_rcnn.FastRCNNOutputLayers` built from the config (text classifier,
test vocabulary, inference with NMS or soft-NMS) and `postprocessing.detector_postprocess`, run in
PyTorch on CPU with the harness of tests/test_official_rpn.py (its stand-ins for fvcore,
detectron2 config and torchvision NMS). torchvision's `roi_align` is replaced by the numpy port of
its CPU kernel that tests/test_ops_roi_align.py checks our RoIAlign against: RoIAlign parity
rests on that port. Both sides get the same 96 x 96 photo (no resize, no padding) and proposals.
RPN-score fusion (MODEL.CLIP.MULTIPLY_RPN_SCORE, our `rpn_fusion="raw_logit"`): both sides get the
same proposals with the same raw objectness logits.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import test_official_rpn as harness
from test_official_rpn import d2  # noqa: F401  (the official detectron2 modules, a fixture)
from test_ops_roi_align import ref_roi_align

from regionclip_jax.detection import export
from regionclip_jax.detection.classifier import text_logits
from regionclip_jax.detection.heads import OpenVocabFasterRCNN
from regionclip_jax.detection.inference import make_classify_fn
from regionclip_jax.models.checkpoints import CheckpointError
from regionclip_jax.models.checkpoints.detect import REGIONCLIP_DETECTOR, detect_kind
from regionclip_jax.models.clip import load
from regionclip_jax.models.convert_openai import state_dict_from_params
from regionclip_jax.tools import convert
from regionclip_jax.tools.zero_shot import ZeroShotDetector

P = "roi_heads.box_predictor."
COCO_CONFIG = "configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml"
EXTRA_FILES = [
    "detectron2/modeling/backbone/clip_backbone.py",
    "detectron2/modeling/poolers.py",
    "detectron2/modeling/postprocessing.py",
    "detectron2/modeling/roi_heads/fast_rcnn.py",
    "detectron2/layers/roi_align.py",
    "detectron2/layers/soft_nms.py",
    COCO_CONFIG,
]


def _official_layout(visual_params, rng, k_train=48, k_test=65, dim=64) -> dict:
  """Our image tower's params under the official names, with a random text-classifier box
  predictor and offline-RPN entries (to be ignored) -> {"model": state dict} of torch tensors."""
  sd = {
      "backbone." + k[len("visual.") :]: v
      for k, v in state_dict_from_params({"visual": visual_params}).items()
  }
  sd[P + "cls_score.weight"] = rng.normal(size=(k_train, dim))
  sd[P + "test_cls_score.weight"] = rng.normal(size=(k_test, dim))
  sd[P + "cls_bg_score.weight"] = np.zeros((1, dim))
  sd[P + "bbox_pred.weight"] = rng.normal(size=(4, dim)) * 0.05
  sd[P + "bbox_pred.bias"] = rng.normal(size=4) * 0.1
  sd["offline_backbone.res2.0.conv1.weight"] = np.zeros((64, 64, 1, 1))
  sd["offline_proposal_generator.rpn_head.conv.weight"] = np.zeros((8, 8, 3, 3))
  return {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in sd.items()}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  from test_detection_zero_shot import _tiny_clip_dir

  return load(_tiny_clip_dir(tmp_path_factory.mktemp("clip"))[0])


def test_import_round_trip(tiny_clip, tmp_path):
  sd = _official_layout(tiny_clip.params["visual"], np.random.default_rng(0))
  ckpt = str(tmp_path / "regionclip_finetuned-coco_tiny.pth")
  torch.save({"model": sd, "iteration": 90000}, ckpt)
  assert detect_kind(ckpt) == REGIONCLIP_DETECTOR
  out = str(tmp_path / "export")
  assert convert.main([f"--input={ckpt}", f"--output={out}"]) == 0  # the kind found from the keys
  det, variables, meta = export.load_export(out)
  assert (meta["num_classes"], meta["train_num_classes"], meta["pooler_resolution"]) == (65, 48, 4)
  assert isinstance(det, OpenVocabFasterRCNN) and det.pooler_resolution == 4
  got = dict(jax.tree_util.tree_leaves_with_path(variables["params"]["backbone"]["visual"]))
  for path, want in jax.tree_util.tree_leaves_with_path(tiny_clip.params["visual"]):
    np.testing.assert_array_equal(
        np.asarray(got[path]), np.asarray(want), jax.tree_util.keystr(path)
    )
  bbox = variables["params"]["bbox_pred"]
  np.testing.assert_array_equal(np.asarray(bbox["kernel"]), sd[P + "bbox_pred.weight"].numpy().T)
  np.testing.assert_array_equal(np.asarray(bbox["bias"]), sd[P + "bbox_pred.bias"].numpy())
  emb = np.load(os.path.join(out, "class_embeddings.npy"))
  np.testing.assert_array_equal(emb, sd[P + "test_cls_score.weight"].numpy())
  train = np.load(os.path.join(out, "train_class_embeddings.npy"))
  np.testing.assert_array_equal(train, sd[P + "cls_score.weight"].numpy())
  # the zero-shot tool (and its evaluation) takes the export as a fine-tuned detector
  zs = ZeroShotDetector(out, test_size=64, max_size=96, score_thresh=0.0, topk=10)
  img = np.asarray(Image.new("RGB", (90, 70), (120, 60, 30)))
  d = zs.detect(img, emb, boxes=np.asarray([[5, 5, 40, 50], [30, 10, 85, 66]], np.float32))
  assert d["boxes"].shape == (10, 4) and (d["classes"] < 65).all()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda sd: sd.update({P + "cls_bg_score.weight": torch.ones(1, 64)}), "cls_bg_score"),
        (lambda sd: sd.update({P + "bbox_pred.weight": torch.zeros(8, 64)}), "class-agnostic"),
        (lambda sd: sd.update({P + "cls_score.bias": torch.zeros(48)}), "cls_score.bias"),
        (lambda sd: sd.update({"roi_heads.box_head.fc1.weight": torch.zeros(4, 4)}), "FPN"),
        (lambda sd: sd.pop("backbone.attnpool.c_proj.weight"), "attnpool"),
        (lambda sd: sd.update({P + "cls_score.weight": torch.zeros(48, 32)}), "64-d"),
    ],
)
def test_unsupported_layouts_are_refused_by_name(tiny_clip, tmp_path, change, match):
  sd = _official_layout(tiny_clip.params["visual"], np.random.default_rng(0))
  change(sd)
  ckpt = str(tmp_path / "ft.pth")
  torch.save({"model": sd}, ckpt)
  with pytest.raises(CheckpointError, match=match) as e:
    export.export_regionclip_detector(ckpt, str(tmp_path / "out"))
  assert "ft.pth" in str(e.value) and "\n" not in str(e.value)
  assert not export.is_export(str(tmp_path / "out"))


# ----------------------------------------------------------------------------- official parity


def _tv_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned):
  """torchvision.ops.roi_align (NCHW features, [K, 5] rois) through the numpy kernel port."""
  feats = input.permute(0, 2, 3, 1).double().numpy()
  hw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  out = [
      ref_roi_align(
          feats[int(r[0]) : int(r[0]) + 1],
          r[None, None, 1:].double().numpy(),
          hw,
          spatial_scale,
          sampling_ratio,
          aligned,
      )[0, 0]
      for r in boxes
  ]
  out = np.stack(out) if out else np.zeros((0,) + hw + (feats.shape[-1],))
  return torch.from_numpy(out.transpose(0, 3, 1, 2).astype(np.float32))


@pytest.fixture(scope="module")
def official(d2):  # noqa: F811
  """The detector's official modules on top of the RPN harness's stand-ins."""
  src = os.environ.get(harness.SRC_ENV, harness.DEFAULT_SRC)
  for path in EXTRA_FILES:
    dst = os.path.join(d2.root, path)
    if not os.path.isfile(dst):
      blob = subprocess.run(
          ["git", f"--git-dir={src}", "show", f"HEAD:{path}"], capture_output=True
      )
      if blob.returncode != 0:
        pytest.skip(f"{src}: cannot read {path}")
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      with open(dst, "wb") as f:
        f.write(blob.stdout)
  pkg = os.path.join(d2.root, "detectron2")
  imp = importlib.import_module
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sys.modules["torchvision.ops"], "roi_align", _tv_roi_align, raising=False)
    mp.setattr(sys.modules["torchvision.ops"], "RoIPool", harness._unavailable("RoIPool"), False)
    mp.setattr(sys.modules["torchvision"], "__version__", "0.15.0", raising=False)
    mp.delitem(sys.modules, "detectron2.modeling.backbone.clip_backbone")  # the harness's stub
    roi_heads = harness._module("detectron2.modeling.roi_heads", f"{pkg}/modeling/roi_heads")
    mp.setitem(sys.modules, "detectron2.modeling.roi_heads", roi_heads)
    layers, structures = sys.modules["detectron2.layers"], sys.modules["detectron2.structures"]
    mp.setattr(layers, "cross_entropy", imp("detectron2.layers.wrappers").cross_entropy, False)
    mp.setattr(layers, "ROIAlign", imp("detectron2.layers.roi_align").ROIAlign, False)
    mp.setattr(layers, "ROIAlignRotated", harness._unavailable("ROIAlignRotated"), False)
    mp.setattr(structures, "pairwise_iou_rotated", harness._unavailable("rotated IoU"), False)
    mp.setattr(structures, "ROIMasks", type("ROIMasks", (), {}), False)
    yield types.SimpleNamespace(
        d2=d2,
        clip=imp("detectron2.modeling.backbone.clip_backbone"),
        poolers=imp("detectron2.modeling.poolers"),
        fast_rcnn=imp("detectron2.modeling.roi_heads.fast_rcnn"),
        post=imp("detectron2.modeling.postprocessing"),
        structures=structures,
    )


def _coco_config(off):
  """defaults.py + Base-RCNN-C4.yaml + CLIP_fast_rcnn_R_50_C4_ovd.yaml."""
  cfg = harness._CfgNode(off.d2.defaults)

  def merge(path):
    with open(path) as f:
      y = yaml.safe_load(f)
    if "_BASE_" in y:
      merge(os.path.normpath(os.path.join(os.path.dirname(path), y.pop("_BASE_"))))
    harness._merge(cfg, y)

  merge(os.path.join(off.d2.root, COCO_CONFIG))
  return cfg


def _official_model(off, cfg, tmp_path, size="tiny", seed=0):
  """The config's CLIP ResNet (RN50 by `build_clip_resnet_backbone`, or a tiny one: one block
  per stage, width 16) with random norm statistics, and the config's box predictor with random
  train / test text embeddings; -> (backbone, predictor, test embeddings)."""
  g = torch.Generator().manual_seed(seed)
  dim = 64 if size == "tiny" else 1024
  with torch.random.fork_rng():
    torch.manual_seed(seed)
    if size == "tiny":
      backbone = off.clip.ModifiedResNet(
          layers=[1, 1, 1, 1],
          output_dim=dim,
          heads=8,
          input_resolution=64,
          width=16,
          out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
          freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
          pool_vec=False,
          create_att_pool=True,
      )
    else:
      backbone = off.clip.build_clip_resnet_backbone(cfg, off.d2.resnet.ShapeSpec(channels=3))
    backbone.eval()
    for name, m in backbone.named_modules():
      if hasattr(m, "running_var"):
        c = m.running_var.shape[0]
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
        m.weight.copy_((0.25 if "bn3" in name else 1.0) * (torch.rand(c, generator=g) + 0.5))
        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    paths = {}
    for name, k in (("TEXT_EMB_PATH", 48), ("OPENSET_TEST_TEXT_EMB_PATH", 65)):
      paths[name] = str(tmp_path / f"{name}.pth")
      torch.save(torch.randn(k, dim, generator=g), paths[name])
    cfg.MODEL.CLIP.TEXT_EMB_PATH = paths["TEXT_EMB_PATH"]
    cfg.MODEL.CLIP.OPENSET_TEST_TEXT_EMB_PATH = paths["OPENSET_TEST_TEXT_EMB_PATH"]
    cfg.MODEL.CLIP.TEXT_EMB_DIM = dim
    predictor = off.fast_rcnn.FastRCNNOutputLayers(cfg, off.d2.resnet.ShapeSpec(channels=512))
  return backbone, predictor.eval(), torch.load(paths["OPENSET_TEST_TEXT_EMB_PATH"]).numpy()


def _proposals(rng, n, size):
  xy = rng.uniform(0, size * 0.7, (n, 2))
  wh = rng.uniform(8, size * 0.6, (n, 2))
  return np.concatenate([xy, np.minimum(xy + wh, size)], 1).astype(np.float32)


def _run_official(off, cfg, backbone, predictor, img, props, objectness=None):
  """The official modules on `img` and `props` (proposals with `objectness` logits, zeros unless
  given: read only by MULTIPLY_RPN_SCORE)."""
  x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
  mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
  std = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
  images = off.d2.ImageList.from_tensors([(x / 255.0 - mean) / std], backbone.size_divisibility)
  h, w = img.shape[:2]
  proposals = off.structures.Instances((h, w))
  proposals.proposal_boxes = off.structures.Boxes(torch.from_numpy(props))
  obj = np.zeros(len(props), np.float32) if objectness is None else objectness
  proposals.objectness_logits = torch.from_numpy(obj)
  b = cfg.MODEL.ROI_BOX_HEAD
  pooler = off.poolers.ROIPooler(
      output_size=b.POOLER_RESOLUTION,
      scales=(1.0 / 16,),
      sampling_ratio=b.POOLER_SAMPLING_RATIO,
      pooler_type=b.POOLER_TYPE,
  )
  with torch.no_grad():
    res4 = backbone(images.tensor)["res4"]
    crops = backbone.layer4(pooler([res4], [proposals.proposal_boxes]))
    att = backbone.attnpool(crops)
    predictions = predictor(att)
    inst, _ = predictor.inference(predictions, [proposals])
    res = off.post.detector_postprocess(inst[0], h, w)
  return {
      "images": images.tensor[0].permute(1, 2, 0).numpy(),
      "res4": res4[0].permute(1, 2, 0).numpy(),
      "feats": att.numpy(),
      "logits": predictions[0].numpy(),
      "deltas": predictions[1].numpy(),
      "boxes": res.pred_boxes.tensor.numpy(),
      "scores": res.scores.numpy(),
      "classes": res.pred_classes.numpy(),
  }


def _rel(a, b) -> float:
  return float(
      np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-12)
  )


def _official_and_export(official, cfg, tmp_path, size):
  """`_official_model` with box deltas of a useful size, saved in the official layout and
  exported by `export_regionclip_detector` -> (backbone, predictor, photo, proposals, export
  dir, test embeddings)."""
  skd = pytest.importorskip("skimage.data")
  backbone, predictor, test_emb = _official_model(official, cfg, tmp_path, size)
  img = np.asarray(Image.fromarray(skd.astronaut()).resize((96, 96), Image.BILINEAR))
  props = _proposals(np.random.default_rng(1), 30, 96)
  with torch.no_grad():  # box deltas of a useful size: about 0.5 (a few pixels here)
    probe = _run_official(official, cfg, backbone, predictor, img, props)["feats"]
    predictor.bbox_pred.weight.normal_(generator=torch.Generator().manual_seed(2))
    w = predictor.bbox_pred.weight
    w.mul_(0.5 / float((torch.from_numpy(probe) @ w.T).std()))
    predictor.bbox_pred.bias.normal_(std=0.1, generator=torch.Generator().manual_seed(3))
  sd = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
  sd.update({P + k: v for k, v in predictor.state_dict().items()})
  ckpt = str(tmp_path / "regionclip_finetuned-coco_tiny.pth")
  torch.save({"model": sd, "iteration": 90000}, ckpt)
  assert detect_kind(ckpt) == REGIONCLIP_DETECTOR
  out = str(tmp_path / "export")
  export.export_regionclip_detector(ckpt, out)
  emb = np.load(os.path.join(out, "class_embeddings.npy"))
  np.testing.assert_array_equal(emb, test_emb)
  return backbone, predictor, img, props, out, emb


def _detector(out, cfg, **kw) -> ZeroShotDetector:
  """Our detector on the export, with the config's test settings (no resize of the 96 px photo)."""
  t = cfg.MODEL.ROI_HEADS
  return ZeroShotDetector(
      out,
      test_size=96,
      max_size=96,
      score_thresh=t.SCORE_THRESH_TEST,
      nms_thresh=t.NMS_THRESH_TEST,
      topk=cfg.TEST.DETECTIONS_PER_IMAGE,
      soft_nms=t.SOFT_NMS_ENABLED,
      **kw,
  )


def _compare_detections(name, ours, ref, figures) -> dict:
  """Detections as sets: each official one has ours of the same class and box, and each of ours
  an official one (near-tied scores may swap ranks). Adds det_box_px and det_score (absolute:
  pixels, score; over the matched pairs) to `figures`, prints them, then checks the match."""
  n, m = len(ref["scores"]), len(ours["scores"])
  d_box = np.abs(ours["boxes"][:, None] - ref["boxes"][None]).max(-1)
  same = (ours["classes"][:, None] == ref["classes"][None]) & (d_box < 1e-2)
  found = same.any(0)
  d_score = np.where(same, np.abs(ours["scores"][:, None] - ref["scores"][None]), np.inf).min(0)
  figures["det_box_px"] = float(np.where(same, d_box, np.inf).min(0)[found].max(initial=0.0))
  figures["det_score"] = float(d_score[found].max(initial=0.0))
  # det_box_px, det_score: absolute; the rest relative to the reference max
  print(f"\n[{name}] {n} detections ({m} ours), {int(found.sum())} matched; max diff. {figures}")
  assert m == n > 10, (m, n)
  assert found.all() and same.any(1).all(), (int(found.sum()), n)
  return figures


@pytest.mark.parametrize(
    "size, soft_nms",
    [
        ("tiny", False),
        ("tiny", True),
        pytest.param("rn50", True, marks=pytest.mark.slow),
    ],
)
def test_imported_detector_matches_the_official_modules(official, tmp_path, size, soft_nms):
  cfg = _coco_config(official)
  if size == "tiny":
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4  # 2 x the tiny attnpool grid (RN50: 14)
  cfg.MODEL.ROI_HEADS.SOFT_NMS_ENABLED = soft_nms
  assert tuple(cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS) == (10.0, 10.0, 5.0, 5.0)
  assert (cfg.MODEL.CLIP.CLSS_TEMP, cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE) == (0.01, "ROIAlignV2")
  assert not cfg.MODEL.CLIP.NO_BOX_DELTA and not cfg.MODEL.CLIP.MULTIPLY_RPN_SCORE
  backbone, predictor, img, props, out, emb = _official_and_export(official, cfg, tmp_path, size)
  ref = _run_official(official, cfg, backbone, predictor, img, props)
  det = _detector(out, cfg)
  x, _, _ = det.preprocess(img)
  p = det.predictor
  res4 = p.det.apply(p.variables, x, method=OpenVocabFasterRCNN.features)
  feats, deltas = p.region_outputs(x, props[None])
  logits = text_logits(feats[0], emb, cfg.MODEL.CLIP.CLSS_TEMP)
  ours = det.detect(img, emb, boxes=props)
  figures = {
      "input": _rel(x[0], ref["images"]),
      "res4": _rel(res4[0], ref["res4"]),
      "region_feats": _rel(feats[0], ref["feats"]),
      "logits": _rel(logits, ref["logits"]),
      "deltas": _rel(deltas[0], ref["deltas"]),
  }
  name = f"{size}, {'soft-NMS' if soft_nms else 'NMS'}"
  figures = _compare_detections(name, ours, ref, figures)
  for k in ("input", "res4", "region_feats", "deltas"):
    assert figures[k] < 1e-4, (k, figures)
  assert figures["logits"] < 1e-3 and figures["det_score"] < 1e-4, figures


@pytest.mark.parametrize(
    "soft_nms, vis", [(False, False), (False, True), (True, False), (True, True)]
)
def test_rpn_score_fusion_matches_the_official_modules(official, tmp_path, soft_nms, vis):
  """MODEL.CLIP.MULTIPLY_RPN_SCORE (LVISv1 CLIP_fast_rcnn_R_50_C4.yaml): official
  `FastRCNNOutputLayers.inference` takes sqrt(softmax * objectness_logits) over all K+1 columns,
  the proposals' raw RPN logits (a negative one gives NaN, and `fast_rcnn_inference_single_image`
  drops the row as non-finite); thresholds, NMS / soft-NMS and top-k rank the fused scores, which
  are reported unless MODEL.CLIP.VIS (the custom-image visualisation config) reports the un-fused
  ones (NMS only: soft-NMS reports its decayed fused scores either way). Ours: `rpn_fusion=
  "raw_logit"` and `report_unfused` = VIS, fed the same proposals and logits through the
  predictor's classify program."""
  cfg = _coco_config(official)
  cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4
  cfg.MODEL.ROI_HEADS.SOFT_NMS_ENABLED = soft_nms
  cfg.MODEL.CLIP.MULTIPLY_RPN_SCORE = True
  cfg.MODEL.CLIP.VIS = vis
  backbone, predictor, img, props, out, emb = _official_and_export(official, cfg, tmp_path, "tiny")
  assert predictor.multiply_rpn_score and predictor.vis == vis
  # raw RPN logits: some negative (those proposals drop out), some past 2 (fused scores past 1)
  objectness = np.random.default_rng(4).normal(1.0, 2.0, len(props)).astype(np.float32)
  assert (objectness < 0).sum() >= 5 and (objectness > 2).sum() >= 5
  ref = _run_official(official, cfg, backbone, predictor, img, props, objectness)
  det = _detector(out, cfg, rpn_fusion="raw_logit", report_unfused=vis)
  x, image_size, _ = det.preprocess(img)
  p = det.predictor
  assert p.inference.rpn_fusion == "raw_logit"
  feats, deltas = p.region_outputs(x, props[None])
  assert p.inference.report_unfused == vis
  got = make_classify_fn(p.inference)(
      feats,
      deltas,
      jnp.asarray(props[None]),
      jnp.ones((1, len(props)), bool),
      jnp.asarray(image_size),
      jnp.asarray(emb),
      jnp.asarray(objectness[None]),
  )
  got = jax.tree.map(np.asarray, got)
  keep = got["valid"][0]
  ours = {k: got[k][0][keep] for k in ("boxes", "scores", "classes")}
  assert (objectness[got["roi_index"][0][keep]] > 0).all()  # the NaN rows are gone
  name = f"tiny, {'soft-NMS' if soft_nms else 'NMS'}, RPN fusion raw_logit, VIS={vis}"
  figures = _compare_detections(name, ours, ref, {})
  assert figures["det_box_px"] < 1e-2 and figures["det_score"] < 1e-4, figures
