"""The official offline RPNs against the official code itself.

Reference: RegionCLIP's own detectron2 (microsoft/RegionCLIP, the fork the offline RPNs run in):
`modeling/backbone/{resnet,fpn}.py`, `modeling/proposal_generator/{rpn,proposal_utils}.py`,
`modeling/{anchor_generator,box_regression,matcher,sampling}.py`, `layers/{wrappers,batch_norm,
blocks,nms,shape_spec}.py`, `structures/{boxes,instances,image_list}.py` and `config/defaults.py`,
imported by path from a checkout (env REGIONCLIP_SRC: a work tree or a git dir; default the
fetched mirror), run in PyTorch on CPU. The models are built from the official configs the way
`clip_rcnn.py` builds its offline modules (defaults + `_BASE_` chain + the RPN yaml, and for the
LSJ RPN the `OFFLINE_RPN_LSJ_PRETRAINED` overrides), given random weights, saved as a detectron2
checkpoint (`{"model": state_dict}` with the modules' own key names), converted with
`tools.convert`, loaded with `export.load_rpn` and run through `inference.rpn_proposals`.

What the reference cannot import here is replaced by small stand-ins, none of which computes
anything compared: fvcore (not installed: Registry, weight-init helpers, distributed all-reduce),
detectron2's `configurable` / `CfgNode` (fvcore-based; re-implemented with the published
semantics), events / memory / comm utilities, the CLIP backbone module `fpn.py` imports, and
torchvision's `nms` / `batched_nms`, whose compiled ops do not load beside the CPU torch
(`operator torchvision::nms does not exist`): `_tv_nms` / `_tv_batched_nms` below are ports of
torchvision's published CPU kernel (`nms_kernel.cpp`) and of `ops/boxes.py`'s `batched_nms`.
"""

from __future__ import annotations

import functools
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

from regionclip_jax.data.transforms import resize_image, shortest_edge_size
from regionclip_jax.detection import export, inference, offline_rpn
from regionclip_jax.detection.settings import RPNSettings
from regionclip_jax.models.clip import normalize_images
from regionclip_jax.tools import convert

SRC_ENV = "REGIONCLIP_SRC"
DEFAULT_SRC = "/work/.mirror/microsoft+RegionCLIP/repo"
D2_FILES = [
    f"detectron2/{f}.py"
    for f in (
        "layers/wrappers",
        "layers/shape_spec",
        "layers/batch_norm",
        "layers/blocks",
        "layers/nms",
        "structures/boxes",
        "structures/instances",
        "structures/image_list",
        "utils/env",
        "utils/registry",
        "config/defaults",
        "modeling/backbone/backbone",
        "modeling/backbone/build",
        "modeling/backbone/resnet",
        "modeling/backbone/fpn",
        "modeling/anchor_generator",
        "modeling/box_regression",
        "modeling/matcher",
        "modeling/sampling",
        "modeling/proposal_generator/proposal_utils",
        "modeling/proposal_generator/rpn",
    )
]
CONFIGS = {
    "c4": "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x_ovd_FSD.yaml",  # rpn_coco_48
    "fpn": "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",  # rpn_lvis_866(_lsj)
}
CONFIG_FILES = list(CONFIGS.values()) + ["configs/Base-RCNN-C4.yaml", "configs/Base-RCNN-FPN.yaml"]


# --- stand-ins for what the reference imports but cannot load here ------------------------------
def _tv_nms(boxes, scores, iou_threshold):
  """torchvision's CPU `nms` kernel: sweep boxes by descending score (stable sort), drop every
  later box whose IoU with a kept one is > threshold; IoU = inter / (area_i + area_j - inter)."""
  if boxes.numel() == 0:
    return torch.empty((0,), dtype=torch.int64)
  x1, y1, x2, y2 = boxes.unbind(1)
  areas = (x2 - x1) * (y2 - y1)
  order = scores.sort(stable=True, descending=True)[1]
  suppressed = torch.zeros(len(boxes), dtype=torch.bool)
  keep = []
  for pos in range(len(order)):
    i = order[pos]
    if suppressed[i]:
      continue
    keep.append(int(i))
    rest = order[pos + 1 :]
    w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
    h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
    inter = w * h
    suppressed[rest[inter / (areas[i] + areas[rest] - inter) > iou_threshold]] = True
  return torch.as_tensor(keep, dtype=torch.int64)


def _tv_batched_nms(boxes, scores, idxs, iou_threshold):
  """torchvision `ops.boxes.batched_nms`: per-class loop above 4000 coordinates on CPU, else the
  coordinate-offset trick; kept indices sorted by descending score."""
  if boxes.numel() == 0:
    return torch.empty((0,), dtype=torch.int64)
  if boxes.numel() > 4000:
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for cls in torch.unique(idxs):
      cur = torch.where(idxs == cls)[0]
      keep_mask[cur[_tv_nms(boxes[cur], scores[cur], iou_threshold)]] = True
    keep = torch.where(keep_mask)[0]
    return keep[scores[keep].sort(descending=True)[1]]
  offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
  return _tv_nms(boxes + offsets[:, None], scores, iou_threshold)


class _Registry:
  """fvcore's Registry: name -> object, filled by `register()`."""

  def __init__(self, name):
    self._name, self._obj = name, {}

  def register(self, obj=None):
    def deco(o):
      self._obj[o.__name__] = o
      return o

    return deco if obj is None else deco(obj)

  def get(self, name):
    return self._obj[name]


class _CfgNode(dict):
  """fvcore CfgNode: a dict with attribute access, nested from dicts."""

  def __init__(self, init=None, new_allowed=False):
    super().__init__()
    for k, v in (init or {}).items():
      self[k] = _CfgNode(v) if isinstance(v, dict) else v

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None

  def __setattr__(self, name, value):
    self[name] = value


def _configurable(init_func):
  """detectron2 `configurable` on an `__init__`: called with a CfgNode first, the arguments come
  from the class's `from_config(cfg, ...)`; otherwise they pass through."""

  @functools.wraps(init_func)
  def wrapped(self, *args, **kwargs):
    if args and isinstance(args[0], _CfgNode):
      init_func(self, **type(self).from_config(*args, **kwargs))
    else:
      init_func(self, *args, **kwargs)

  return wrapped


def _c2_msra_fill(m):
  torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
  if m.bias is not None:
    torch.nn.init.constant_(m.bias, 0)


def _c2_xavier_fill(m):
  torch.nn.init.kaiming_uniform_(m.weight, a=1)
  if m.bias is not None:
    torch.nn.init.constant_(m.bias, 0)


def _module(name, package_dir=None, **attrs):
  m = types.ModuleType(name)
  if package_dir is not None:
    m.__path__ = [package_dir]
  m.__dict__.update(attrs)
  return m


def _unavailable(name):
  def fn(*a, **k):
    raise NotImplementedError(f"{name} is not available in this test")

  return fn


def _source_root(tmp_path_factory) -> str:
  src = os.environ.get(SRC_ENV, DEFAULT_SRC)
  if not os.path.exists(src):
    pytest.skip(
        f"the official RegionCLIP source is absent ({SRC_ENV} unset and {DEFAULT_SRC} missing); "
        "point REGIONCLIP_SRC at a checkout of github.com/microsoft/RegionCLIP"
    )
  if os.path.isfile(os.path.join(src, D2_FILES[0])):
    return src  # a work tree
  root = str(tmp_path_factory.mktemp("regionclip_src"))
  for path in D2_FILES + CONFIG_FILES:
    blob = subprocess.run(
        ["git", f"--git-dir={src}", "show", f"HEAD:{path}"], capture_output=True, check=False
    )
    if blob.returncode != 0:
      pytest.skip(f"{src}: cannot read {path} ({blob.stderr.decode().strip()[:200]})")
    os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
    with open(os.path.join(root, path), "wb") as f:
      f.write(blob.stdout)
  return root


@pytest.fixture(scope="module")
def d2(tmp_path_factory):
  """The reference modules, imported from the official files with the stand-ins installed; all of
  it leaves sys.modules after this file's tests."""
  root = _source_root(tmp_path_factory)
  pkg = os.path.join(root, "detectron2")
  before = set(sys.modules)
  stubs = {
      "fvcore": _module("fvcore", ""),
      "fvcore.nn": _module(
          "fvcore.nn",
          "",
          giou_loss=_unavailable("giou_loss"),
          smooth_l1_loss=_unavailable("smooth_l1_loss"),
      ),
      "fvcore.nn.weight_init": _module(
          "fvcore.nn.weight_init", c2_msra_fill=_c2_msra_fill, c2_xavier_fill=_c2_xavier_fill
      ),
      "fvcore.nn.distributed": _module(
          "fvcore.nn.distributed", differentiable_all_reduce=_unavailable("all_reduce")
      ),
      "fvcore.common": _module("fvcore.common", ""),
      "fvcore.common.registry": _module("fvcore.common.registry", Registry=_Registry),
      "torchvision": _module("torchvision", ""),
      "torchvision.ops": _module("torchvision.ops", "", nms=_tv_nms),
      "torchvision.ops.boxes": _module(
          "torchvision.ops.boxes", nms=_tv_nms, batched_nms=_tv_batched_nms
      ),
      "detectron2": _module("detectron2", pkg),
      "detectron2._C": _module("detectron2._C"),
      "detectron2.layers": _module("detectron2.layers", f"{pkg}/layers"),
      "detectron2.structures": _module("detectron2.structures", f"{pkg}/structures"),
      "detectron2.utils": _module("detectron2.utils", f"{pkg}/utils"),
      "detectron2.utils.comm": _module("detectron2.utils.comm", get_world_size=lambda: 1),
      "detectron2.utils.events": _module(
          "detectron2.utils.events", get_event_storage=_unavailable("events")
      ),
      "detectron2.utils.memory": _module("detectron2.utils.memory", retry_if_cuda_oom=lambda f: f),
      "detectron2.config": _module(
          "detectron2.config", f"{pkg}/config", configurable=_configurable, CfgNode=_CfgNode
      ),
      "detectron2.config.config": _module("detectron2.config.config", CfgNode=_CfgNode),
      "detectron2.modeling": _module("detectron2.modeling", f"{pkg}/modeling"),
      "detectron2.modeling.backbone": _module(
          "detectron2.modeling.backbone", f"{pkg}/modeling/backbone"
      ),
      "detectron2.modeling.backbone.clip_backbone": _module(
          "detectron2.modeling.backbone.clip_backbone",
          build_clip_resnet_backbone=_unavailable("clip_backbone"),
      ),
      "detectron2.modeling.proposal_generator": _module(
          "detectron2.modeling.proposal_generator", f"{pkg}/modeling/proposal_generator"
      ),
      "detectron2.modeling.proposal_generator.build": _module(
          "detectron2.modeling.proposal_generator.build",
          PROPOSAL_GENERATOR_REGISTRY=_Registry("PROPOSAL_GENERATOR"),
      ),
  }
  imp = __import__("importlib").import_module
  with pytest.MonkeyPatch.context() as mp:
    for k, v in stubs.items():
      mp.setitem(sys.modules, k, v)
    layers, structures = sys.modules["detectron2.layers"], sys.modules["detectron2.structures"]
    wrappers = imp("detectron2.layers.wrappers")
    layers.__dict__.update(
        {k: getattr(wrappers, k) for k in ("Conv2d", "cat", "nonzero_tuple", "BatchNorm2d")}
    )
    layers.ShapeSpec = imp("detectron2.layers.shape_spec").ShapeSpec
    bn = imp("detectron2.layers.batch_norm")
    layers.FrozenBatchNorm2d, layers.get_norm = bn.FrozenBatchNorm2d, bn.get_norm
    layers.CNNBlockBase = imp("detectron2.layers.blocks").CNNBlockBase
    layers.DeformConv = layers.ModulatedDeformConv = _unavailable("deformable conv")
    with pytest.MonkeyPatch.context() as ops:
      # nms.py binds the compiled rotated NMS at import; nothing here calls it
      ops.setattr(torch, "ops", types.SimpleNamespace(detectron2=types.SimpleNamespace()))
      sys.modules["torch"].ops.detectron2.nms_rotated = _unavailable("nms_rotated")
      layers.batched_nms = imp("detectron2.layers.nms").batched_nms
    boxes = imp("detectron2.structures.boxes")
    structures.Boxes, structures.pairwise_iou = boxes.Boxes, boxes.pairwise_iou
    structures.Instances = imp("detectron2.structures.instances").Instances
    structures.ImageList = imp("detectron2.structures.image_list").ImageList
    structures.RotatedBoxes = type("RotatedBoxes", (), {})
    ns = types.SimpleNamespace(
        root=root,
        defaults=imp("detectron2.config.defaults")._C,
        resnet=imp("detectron2.modeling.backbone.resnet"),
        fpn=imp("detectron2.modeling.backbone.fpn"),
        rpn=imp("detectron2.modeling.proposal_generator.rpn"),
        ImageList=structures.ImageList,
    )
    yield ns
  for k in set(sys.modules) - before:
    if k.startswith(("detectron2", "fvcore", "torchvision")):
      del sys.modules[k]


def _merge(cfg, d):
  for k, v in d.items():
    if isinstance(v, dict):
      _merge(cfg[k], v)
    else:
      cfg[k] = v


def official_cfg(d2, arch: str, lsj: bool = False):
  """defaults.py + the `_BASE_` chain + the RPN yaml (+ clip_rcnn.py's LSJ overrides)."""
  cfg = _CfgNode(d2.defaults)  # a copy: nested nodes are rebuilt

  def load(path):
    with open(path) as f:
      y = yaml.safe_load(f)
    if "_BASE_" in y:
      load(os.path.normpath(os.path.join(os.path.dirname(path), y.pop("_BASE_"))))
    _merge(cfg, y)

  load(os.path.join(d2.root, CONFIGS[arch]))
  if lsj:  # clip_rcnn.py, `if cfg.MODEL.CLIP.OFFLINE_RPN_LSJ_PRETRAINED:`
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.NORM = "SyncBN"
    cfg.MODEL.FPN.NORM = "SyncBN"
    cfg.MODEL.RPN.CONV_DIMS = [-1, -1]
  return cfg


def _randomise(model, seed):
  """Weights whose activations stay O(1) through 16 residual blocks, and head outputs spread
  enough that ranking ties are rare: detectron2's inits, with random norm statistics and smaller
  residual-branch gains; the RPN head wider than its std 0.01 init."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, m in model.named_modules():
      if hasattr(m, "running_var"):
        c = m.running_var.shape[0]
        gain = 0.25 if ".conv3" in name else (1 / 40 if "stem" in name else 1.0)
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
        m.weight.copy_(gain * (torch.rand(c, generator=g) + 0.5))
        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    for name, p in model.named_parameters():
      if "rpn_head" in name:
        fan_in = p[0].numel() if p.ndim == 4 else 1
        std = {"objectness_logits": 3.0, "anchor_deltas": 0.3}.get(name.split(".")[-2], 1.4)
        p.copy_(torch.randn(p.shape, generator=g) * std / fan_in**0.5)
      elif "fpn_" in name and name.endswith("bias"):
        p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def build_reference(d2, cfg, seed=0):
  """(backbone, rpn) built from `cfg` by the official builders, eval mode, random weights."""
  shape = d2.resnet.ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
  build = {
      "build_resnet_backbone": d2.resnet.build_resnet_backbone,
      "build_resnet_fpn_backbone": d2.fpn.build_resnet_fpn_backbone,
  }[cfg.MODEL.BACKBONE.NAME]
  with torch.random.fork_rng():  # the builders' own inits draw from the global generator
    torch.manual_seed(seed)
    backbone = build(cfg, shape)
    rpn = d2.rpn.RPN(cfg, backbone.output_shape())
  model = torch.nn.ModuleDict({"backbone": backbone, "proposal_generator": rpn}).eval()
  _randomise(model, seed)
  return backbone, rpn


def save_checkpoint(backbone, rpn, path):
  """detectron2's checkpoint layout: {"model": state_dict, "iteration": ...}; the box head's keys
  ride along as in a real Mask R-CNN file and must be ignored."""
  sd = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
  sd.update({f"proposal_generator.{k}": v for k, v in rpn.state_dict().items()})
  sd["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(49, 1024)
  sd["pixel_mean"] = torch.tensor([103.53, 116.28, 123.675]).view(-1, 1, 1)
  torch.save({"model": sd, "iteration": 90000}, path)


def photo(name: str, short: int = 800, longest: int = 1333) -> np.ndarray:
  """A real photo resized as the test configs do (shorter side 800, longer at most 1333)."""
  skd = pytest.importorskip("skimage.data")
  img = getattr(skd, name)()
  h, w = img.shape[:2]
  nh, nw = shortest_edge_size(h, w, short, longest)
  return resize_image(np.ascontiguousarray(img[..., :3]), nh, nw, "bilinear")


def run_both(d2, cfg, backbone, rpn, rpn_dir, img):
  """The same image through the official modules and through the converted RPN."""
  # official: RGB dataset image -> offline BGR, minus the offline mean (offline_preprocess_image)
  x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
  if cfg.INPUT.FORMAT == "BGR":
    x = x[[2, 1, 0]]
  mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
  std = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
  images = d2.ImageList.from_tensors([(x - mean) / std], backbone.size_divisibility)
  with torch.no_grad():
    feats = backbone(images.tensor)
    levels = [feats[f] for f in rpn.in_features]
    ref_logits, ref_deltas = rpn.rpn_head(levels)
    ref = rpn(images, feats, None)[0][0]
  # ours: CLIP-normalised RGB, zero-padded to the official batch tensor's size
  ph, pw = images.tensor.shape[-2:]
  ours_in = np.zeros((1, ph, pw, 3), np.float32)
  ours_in[0, : img.shape[0], : img.shape[1]] = normalize_images(img)
  model, gen, variables = export.load_rpn(rpn_dir)
  logits, deltas = jax.jit(model.apply)(variables, jnp.asarray(ours_in))
  settings = RPNSettings(nms_thresh=cfg.MODEL.RPN.NMS_THRESH, min_box_size=0.0)
  hw = jnp.asarray([img.shape[:2]], jnp.float32)
  boxes, scores, valid = jax.jit(
      lambda v, im: inference.rpn_proposals(
          model,
          gen,
          settings,
          v,
          im,
          hw,
          cfg.MODEL.RPN.PRE_NMS_TOPK_TEST,
          cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
      )
  )(variables, jnp.asarray(ours_in))
  head = []
  for lr, dr, lo, do in zip(ref_logits, ref_deltas, logits, deltas):
    n, a, h, w = lr.shape
    head.append(
        (
            np.abs(np.asarray(lo) - lr.permute(0, 2, 3, 1).numpy()).max(),
            np.abs(np.asarray(do) - dr.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).numpy()).max(),
            float(lr.abs().max()),
        )
    )
  return head, ref, (np.asarray(boxes[0]), np.asarray(scores[0]), np.asarray(valid[0]))


def compare(name, head, ref_boxes, ref_logits, ours):
  """Head outputs elementwise (`head`: per level (max|d logit|, max|d delta|, max|logit|));
  proposals as ranked lists (same count, same logits, same boxes)."""
  boxes, logits, valid = ours
  n = int(valid.sum())
  d_logit = max(h[0] for h in head)
  d_delta = max(h[1] for h in head)
  assert n == len(ref_boxes), (name, n, len(ref_boxes))
  assert valid[:n].all()
  d_prop_logit = np.abs(logits[:n] - ref_logits).max()
  # Proposals whose logits differ by less than the two programs' rounding (~1e-5) may trade
  # ranks: each box is compared with the reference boxes of (near-)equal logit, itself included.
  tie = np.abs(logits[:n, None] - ref_logits[None, :]) < 1e-4
  dist = np.abs(boxes[:n, None] - ref_boxes[None, :]).max(-1)
  d_box = np.where(tie, dist, np.inf).min(1).max()
  swapped = int((dist[np.arange(n), np.arange(n)] > 1e-3).sum())
  print(
      f"\n[{name}] {n} proposals; head max|d logit| {d_logit:.2e} (logits up to "
      f"{max(h[2] for h in head):.1f}), max|d delta| {d_delta:.2e}; proposals max|d logit| "
      f"{d_prop_logit:.2e}, max|d box| {d_box:.2e} px (boxes up to {np.abs(ref_boxes).max():.0f} "
      f"px); {swapped} ranks held by a near-tied neighbour"
  )
  assert d_logit < 1e-4 and d_delta < 1e-4, (d_logit, d_delta)
  assert d_prop_logit < 1e-4, d_prop_logit
  # a box is an anchor (up to 512 px) scaled by exp(delta): it inherits the deltas' difference
  assert d_box < 1e-3 + 1024 * d_delta, (d_box, d_delta)
  assert swapped <= 0.02 * n, swapped


def test_converted_settings_are_the_official_configs(d2):
  """What the checkpoint cannot hold (anchors, strides, input convention, test top-k, NMS, the
  block layout) is the RPN configs': checked against the official config files themselves."""
  for arch in ("c4", "fpn"):
    cfg = official_cfg(d2, arch)
    gen = offline_rpn.anchor_generator(arch)
    a = cfg.MODEL.ANCHOR_GENERATOR
    assert [list(map(float, s)) for s in gen.sizes] == [list(map(float, s)) for s in a.SIZES]
    assert list(gen.aspect_ratios[0]) == list(a.ASPECT_RATIOS[0]) and len(a.ASPECT_RATIOS) == 1
    assert gen.offset == a.OFFSET == 0.0
    assert cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE == 0
    assert tuple(cfg.MODEL.RPN.BBOX_REG_WEIGHTS) == (1.0, 1.0, 1.0, 1.0)
    t = offline_rpn.TEST_SETTINGS[arch]
    assert t["pre_nms_topk_test"] == cfg.MODEL.RPN.PRE_NMS_TOPK_TEST
    assert t["post_nms_topk_test"] == cfg.MODEL.RPN.POST_NMS_TOPK_TEST
    assert t["nms_thresh"] == cfg.MODEL.RPN.NMS_THRESH
    assert list(offline_rpn.D2_PIXEL_MEAN) == list(cfg.MODEL.PIXEL_MEAN)
    assert list(offline_rpn.D2_PIXEL_STD) == list(cfg.MODEL.PIXEL_STD)
    assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.RESNETS.NUM_GROUPS == 1
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
    backbone, rpn = build_reference(d2, cfg)
    strides = [backbone.output_shape()[f].stride for f in rpn.in_features]
    assert strides == list(gen.strides), strides
  assert official_cfg(d2, "c4").MODEL.RPN.IN_FEATURES == ["res4"]


@pytest.mark.parametrize(
    "name, arch, lsj, image",
    [
        ("rpn_coco_48 (C4)", "c4", False, "astronaut"),
        ("rpn_lvis_866 (FPN)", "fpn", False, "chelsea"),
        ("rpn_lvis_866_lsj (FPN, SyncBN, 2 head convs)", "fpn", True, "astronaut"),
    ],
)
def test_converted_rpn_matches_the_official_modules(d2, tmp_path, name, arch, lsj, image):
  cfg = official_cfg(d2, arch, lsj)
  backbone, rpn = build_reference(d2, cfg, seed=1)
  ckpt = str(tmp_path / "rpn.pth")
  save_checkpoint(backbone, rpn, ckpt)
  out = str(tmp_path / "rpn")
  assert convert.main([f"--input={ckpt}", f"--output={out}"]) == 0
  meta = export.load_export(out)[2]
  assert (meta["arch"], meta["fpn_norm"], meta["rpn_convs"]) == (arch, lsj, 2 if lsj else 1)
  head, ref, ours = run_both(d2, cfg, backbone, rpn, out, photo(image))
  compare(name, head, ref.proposal_boxes.tensor.numpy(), ref.objectness_logits.numpy(), ours)
