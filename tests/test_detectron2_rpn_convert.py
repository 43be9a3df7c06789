"""Converting detectron2 RPN checkpoints: format detection, renaming round trip, the converted RPN
in the package's proposal paths (zero-shot tool, `load_rpn`), one-line errors. The parity with the
official modules themselves is tests/test_official_rpn.py; these run without the official source."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from regionclip_jax.detection import export, inference, offline_rpn
from regionclip_jax.detection.settings import RPNSettings
from regionclip_jax.models import checkpoints as ck
from regionclip_jax.tools import convert


def _d2_name(path: tuple[str, ...], fpn: bool) -> tuple[str, str]:
  """Our param path -> (detectron2 key, kind); the inverse of checkpoints.detectron2's renaming,
  written independently from the official module names."""
  top, *rest = path
  if top == "backbone":
    trunk = "backbone.bottom_up." if fpn else "backbone."
    mod, *leaf = rest
    if mod == "stem":
      prefix = trunk + "stem.conv1"
    else:
      stage, block = mod.split("_")
      prefix = f"{trunk}{stage}.{block}.{leaf[0]}"
      leaf = leaf[1:]
  elif top == "fpn":
    prefix, leaf = f"backbone.{rest[0]}", rest[1:]
  else:
    name = rest[0] if not re.fullmatch(r"conv\d", rest[0]) else f"conv.{rest[0]}"
    return f"proposal_generator.rpn_head.{name}.{'weight' if rest[1] == 'kernel' else 'bias'}", (
        "conv" if rest[1] == "kernel" else "vec"
    )
  if leaf[0] == "norm":
    stat = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    return f"{prefix}.norm.{stat[leaf[1]]}", "vec"
  return f"{prefix}.{'weight' if leaf[1] == 'kernel' else 'bias'}", (
      "conv" if leaf[1] == "kernel" else "vec"
  )


def _random_leaf(rng, names, shape) -> np.ndarray:
  """Weights whose activations stay O(1) through the residual stages, head outputs spread enough
  that ranking ties are rare: He-normal convs, random norm statistics, small residual gains."""
  if names[-1] == "kernel":
    kh, kw, ci, co = shape
    if names[0] == "rpn_head":
      std = {"objectness_logits": 3.0, "anchor_deltas": 0.3}.get(names[1], 1.4) / (
          kh * kw * ci
      ) ** 0.5
    else:
      std = (2.0 / (kh * kw * co)) ** 0.5
    return (rng.normal(size=shape) * std).astype(np.float32)
  if names[-1] == "scale":
    gain = 0.25 if "conv3" in names else (1 / 40 if "stem" in names else 1.0)
    return (gain * rng.uniform(0.5, 1.5, size=shape)).astype(np.float32)
  if names[-1] == "var":
    return rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
  return (rng.normal(size=shape) * 0.1).astype(np.float32)  # biases, means


def _write_checkpoint(path, arch="c4", fpn_norm=False, rpn_convs=1, blocks=(1, 1, 1, 1), seed=0):
  """A detectron2-layout checkpoint with random weights for a (small) DetectronRPN; -> params."""
  rpn = offline_rpn.DetectronRPN(
      arch=arch,
      num_anchors=offline_rpn.anchor_generator(arch).num_anchors[0],
      blocks_per_stage=blocks,
      fpn_norm=fpn_norm,
      rpn_convs=rpn_convs,
  )
  shapes = jax.eval_shape(
      rpn.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  )["params"]
  rng = np.random.default_rng(seed)
  params, sd = {}, {}
  for p, leaf in jax.tree_util.tree_leaves_with_path(shapes):
    names = tuple(k.key for k in p)
    v = _random_leaf(rng, names, leaf.shape)
    key, kind = _d2_name(names, arch == "fpn")
    sd[key] = torch.from_numpy(v.transpose(3, 2, 0, 1).copy() if kind == "conv" else v)
    params[names] = v
  for key in [k for k in sd if k.endswith("running_var")]:
    sd[key.replace("running_var", "num_batches_tracked")] = torch.tensor(7)
  sd["roi_heads.res5.0.conv1.weight"] = torch.zeros(512, 1024, 1, 1)  # a C4 detector's RoI head
  torch.save({"model": sd, "iteration": 1}, path)
  return params


@pytest.mark.parametrize(
    "arch, fpn_norm, rpn_convs", [("c4", False, 1), ("fpn", False, 1), ("fpn", True, 2)]
)
def test_round_trip_through_convert(tmp_path, arch, fpn_norm, rpn_convs):
  ckpt = str(tmp_path / "rpn.pth")
  params = _write_checkpoint(ckpt, arch, fpn_norm, rpn_convs)
  assert ck.detect_kind(ckpt) == ck.DETECTRON2_RPN
  out = str(tmp_path / "out")
  assert convert.main([f"--input={ckpt}", f"--output={out}"]) == 0
  model, gen, variables = export.load_rpn(out)
  assert isinstance(model, offline_rpn.DetectronRPN)
  assert (model.arch, model.fpn_norm, model.rpn_convs) == (arch, fpn_norm, rpn_convs)
  # the official config's test top-k travel with the export; NMS stays the caller's
  s = export.rpn_test_settings(out, RPNSettings(nms_thresh=0.9))
  assert (s.pre_nms_topk_test, s.post_nms_topk_test, s.nms_thresh) == (
      (6000 if arch == "c4" else 1000),
      1000,
      0.9,
  )
  got = {
      tuple(k.key for k in p): np.asarray(v)
      for p, v in jax.tree_util.tree_leaves_with_path(variables["params"])
  }
  assert got.keys() == params.keys()
  for k, v in params.items():
    np.testing.assert_array_equal(got[k], v, err_msg=str(k))
  # the package's proposal path takes it as it takes a trained RPN
  images = jnp.zeros((1, 128, 128, 3)).at[0, :100, :120].set(0.5)
  boxes, logits, valid = inference.rpn_proposals(
      model, gen, RPNSettings(), variables, images, jnp.asarray([[100.0, 120.0]]), 300, 50
  )
  assert boxes.shape == (1, 50, 4) and bool(valid.any())
  b = np.asarray(boxes[0])[np.asarray(valid[0])]
  assert (b[:, 2] <= 120 + 1e-3).all() and (b[:, 3] <= 100 + 1e-3).all()


def test_zero_shot_tool_takes_a_converted_rpn(tmp_path):
  from test_detection_zero_shot import _tiny_clip_dir

  from regionclip_jax.tools.zero_shot import ZeroShotDetector

  ckpt = str(tmp_path / "rpn_coco_48.pth")
  _write_checkpoint(ckpt, "c4")
  rpn_dir = str(tmp_path / "rpn")
  convert.convert(ckpt, rpn_dir)
  clip_dir, cfg = _tiny_clip_dir(tmp_path)
  det = ZeroShotDetector(clip_dir, rpn=rpn_dir, test_size=64, max_size=96, score_thresh=0.0, topk=5)
  img = (np.random.default_rng(0).uniform(size=(80, 96, 3)) * 255).astype(np.uint8)
  assert det.predictor.rpn_settings.pre_nms_topk_test == 6000  # rpn_coco_48's config
  out = det.detect(img, np.random.default_rng(1).normal(size=(3, cfg.embed_dim)).astype(np.float32))
  assert out["boxes"].shape[1] == 4 and 0 < len(out["scores"]) <= 5


def test_pretraining_proposals_take_a_converted_rpn(tmp_path):
  from regionclip_jax.pretrain.proposals import rpn_proposal_fn

  ckpt = str(tmp_path / "rpn_lvis_866.pth")
  _write_checkpoint(ckpt, "fpn")
  out = str(tmp_path / "rpn")
  convert.convert(ckpt, out)
  fn = rpn_proposal_fn(out, post_nms_topk=30, num_sampled=8, pre_nms_topk=100)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 128, 128, 3))
  batch = {"image": images, "image_size": jnp.asarray([[128, 128], [96, 128]], jnp.int32)}
  boxes, valid = jax.jit(fn)(jax.random.PRNGKey(1), batch)
  assert boxes.shape == (2, 8, 4) and valid.shape == (2, 8) and bool(valid.all())
  assert float(boxes[1, :, 3].max()) <= 96 + 1e-3


def test_padding_is_zero_in_detectron2_pixels():
  img = np.zeros((1, 4, 4, 3), np.float32)
  img[0, :2, :3] = 0.3
  x = np.asarray(offline_rpn.to_detectron2_pixels(jnp.asarray(img)))
  assert (x[0, 2:] == 0).all() and (x[0, :, 3:] == 0).all() and (x[0, :2, :3] != 0).all()
  # a mid-grey pixel: RGB value v -> BGR v - mean
  from regionclip_jax.models.clip import normalize_images

  grey = normalize_images(np.array([[[10, 120, 240]]], np.uint8))[None]
  np.testing.assert_allclose(
      np.asarray(offline_rpn.to_detectron2_pixels(jnp.asarray(grey)))[0, 0, 0],
      np.array([240, 120, 10]) - np.array(offline_rpn.D2_PIXEL_MEAN),
      atol=1e-3,
  )


def _raises(fn, *patterns):
  with pytest.raises(ck.CheckpointError) as info:
    fn()
  msg = str(info.value)
  print("\n" + msg)
  assert "\n" not in msg, msg
  for p in patterns:
    assert p in msg, (p, msg)


def test_errors_are_one_line(tmp_path):
  ckpt = str(tmp_path / "rpn.pth")
  _write_checkpoint(ckpt, "c4")
  # a CLIP loader given an RPN says what it is and how to convert it
  _raises(lambda: ck.load(ckpt), ckpt, "detectron2 RPN", "tools.convert")
  sd = torch.load(ckpt, weights_only=True)["model"]
  # a missing block
  bad = {k: v for k, v in sd.items() if not k.startswith("backbone.res3.0.")}
  torch.save({"model": bad}, ckpt)
  _raises(lambda: convert.convert(ckpt, str(tmp_path / "o1")), ckpt, "backbone.res3", "blocks")
  # a missing norm statistic
  bad = {k: v for k, v in sd.items() if k != "backbone.res2.0.conv2.norm.running_var"}
  torch.save({"model": bad}, ckpt)
  _raises(
      lambda: convert.convert(ckpt, str(tmp_path / "o2")),
      ckpt,
      "backbone.res2.0.conv2.norm.running_var is missing",
      "(64,)",
  )
  # a wrong shape
  bad = dict(sd, **{"backbone.res4.0.conv3.weight": torch.zeros(1024, 128, 1, 1)})
  torch.save({"model": bad}, ckpt)
  _raises(
      lambda: convert.convert(ckpt, str(tmp_path / "o3")),
      "backbone.res4.0.conv3.weight",
      "(1024, 128, 1, 1)",
      "(1024, 256, 1, 1)",
  )
  # anchors the C4 config does not have
  bad = dict(sd)
  bad["proposal_generator.rpn_head.objectness_logits.weight"] = torch.zeros(9, 1024, 1, 1)
  bad["proposal_generator.rpn_head.objectness_logits.bias"] = torch.zeros(9)
  torch.save({"model": bad}, ckpt)
  _raises(lambda: convert.convert(ckpt, str(tmp_path / "o4")), "9 anchors", "15")
  # an unknown backbone module
  torch.save({"model": dict(sd, **{"backbone.res2.0.conv2_offset.weight": torch.zeros(1)})}, ckpt)
  _raises(lambda: convert.convert(ckpt, str(tmp_path / "o5")), "conv2_offset")
  # forced on something else
  torch.save({"model": {"backbone.conv1.weight": torch.zeros(1)}}, ckpt)
  _raises(
      lambda: convert.convert(ckpt, str(tmp_path / "o6"), source=ck.DETECTRON2_RPN),
      "not a detectron2 RPN",
  )
  assert (
      convert.main([f"--input={ckpt}", f"--output={tmp_path / 'o7'}", "--source=detectron2_rpn"])
      == 2
  )


def _transcribed_rpn(sd, arch, x, hw, pre_topk, post_topk, nms_thresh=0.7):
  """detectron2's R-50 (+ FPN) + StandardRPNHead + find_top_rpn_proposals, transcribed here in
  plain PyTorch from the published code's semantics and run on the checkpoint's own keys: the
  reference when the official source is not at hand. x [1, 3, H, W] detectron2 pixels, hw the
  valid (h, w). -> ([(logits [1,A,h,w], deltas [1,4A,h,w]) per level], boxes [P,4], logits [P])."""
  from test_official_rpn import _tv_batched_nms

  fn = torch.nn.functional

  def conv(y, pre, stride=1, pad=0, relu=True):
    y = fn.conv2d(y, sd[pre + ".weight"], sd.get(pre + ".bias"), stride, pad)
    if pre + ".norm.weight" in sd:  # FrozenBatchNorm2d
      scale = sd[pre + ".norm.weight"] * torch.rsqrt(sd[pre + ".norm.running_var"] + 1e-5)
      shift = sd[pre + ".norm.bias"] - sd[pre + ".norm.running_mean"] * scale
      y = y * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    return fn.relu(y) if relu else y

  trunk = "backbone.bottom_up." if arch == "fpn" else "backbone."
  y = fn.max_pool2d(conv(x, trunk + "stem.conv1", 2, 3), 3, 2, 1)
  feats = {}
  for i, st in enumerate(("res2", "res3", "res4", "res5")[: 4 if arch == "fpn" else 3]):
    b = 0
    while f"{trunk}{st}.{b}.conv1.weight" in sd:
      p, s = f"{trunk}{st}.{b}", 2 if b == 0 and i > 0 else 1  # STRIDE_IN_1X1
      out = conv(conv(conv(y, p + ".conv1", s), p + ".conv2", 1, 1), p + ".conv3", relu=False)
      short = conv(y, p + ".shortcut", s, relu=False) if p + ".shortcut.weight" in sd else y
      y, b = fn.relu(out + short), b + 1
    feats[st] = y
  if arch == "c4":
    levels, strides, sizes = [feats["res4"]], [16], [[32, 64, 128, 256, 512]]
  else:
    ps, prev = {}, None
    for lvl in (5, 4, 3, 2):
      lat = conv(feats[f"res{lvl}"], f"backbone.fpn_lateral{lvl}", relu=False)
      if prev is not None:
        lat = lat + fn.interpolate(prev, scale_factor=2.0, mode="nearest")
      prev = lat
      ps[lvl] = conv(lat, f"backbone.fpn_output{lvl}", 1, 1, relu=False)
    levels = [ps[2], ps[3], ps[4], ps[5], fn.max_pool2d(ps[5], 1, 2)]
    strides, sizes = [4, 8, 16, 32, 64], [[32], [64], [128], [256], [512]]
  head = "proposal_generator.rpn_head."
  convs = sorted(
      k[: -len(".weight")] for k in sd if k.startswith(head + "conv") and k.endswith(".weight")
  )
  raw, cand = [], []
  for lvl, (f, stride, size) in enumerate(zip(levels, strides, sizes)):
    t = f
    for c in convs:
      t = conv(t, c, 1, 1)
    logit = conv(t, head + "objectness_logits", relu=False)
    delta = conv(t, head + "anchor_deltas", relu=False)
    raw.append((logit, delta))
    a, h, w = logit.shape[1:]
    logit = logit.permute(0, 2, 3, 1).reshape(-1)
    delta = delta.view(1, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(-1, 4)
    cell = []
    for sz in size:
      for ar in (0.5, 1.0, 2.0):
        cw = (sz * sz / ar) ** 0.5
        cell.append([-cw / 2, -ar * cw / 2, cw / 2, ar * cw / 2])
    sy, sx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32) * stride,
        torch.arange(w, dtype=torch.float32) * stride,
        indexing="ij",
    )
    shifts = torch.stack([sx, sy, sx, sy], -1).reshape(-1, 1, 4)
    anchors = (shifts + torch.tensor(cell)[None]).reshape(-1, 4)
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    clamp = float(np.log(1000.0 / 16))
    pcx, pcy = delta[:, 0] * aw + cx, delta[:, 1] * ah + cy
    pw, ph = (
        torch.exp(delta[:, 2].clamp(max=clamp)) * aw,
        torch.exp(delta[:, 3].clamp(max=clamp)) * ah,
    )
    boxes = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], -1)
    top, idx = logit.sort(descending=True)
    k = min(pre_topk, len(top))
    cand.append((boxes[idx[:k]], top[:k], torch.full((k,), lvl)))
  boxes, logits, lvls = (torch.cat(c) for c in zip(*cand))
  hmax, wmax = float(hw[0]), float(hw[1])
  boxes = torch.stack(
      [boxes[:, i].clamp(0, (wmax, hmax)[i % 2]) for i in range(4)], -1
  )  # Boxes.clip
  ok = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
  boxes, logits, lvls = boxes[ok], logits[ok], lvls[ok]
  keep = _tv_batched_nms(boxes, logits, lvls, nms_thresh)[:post_topk]
  return raw, boxes[keep].numpy(), logits[keep].numpy()


@pytest.mark.parametrize(
    "arch, fpn_norm, rpn_convs, image",
    [("c4", False, 1, "astronaut"), ("fpn", True, 2, "chelsea")],
)
def test_matches_an_independent_torch_transcription(tmp_path, arch, fpn_norm, rpn_convs, image):
  """Full R-50 depth on a real photo (shorter side 320 to stay light), without the official
  source: the converted RPN against `_transcribed_rpn` on the same checkpoint."""
  from test_official_rpn import compare, photo

  from regionclip_jax.models.clip import normalize_images

  ckpt = str(tmp_path / "rpn.pth")
  _write_checkpoint(ckpt, arch, fpn_norm, rpn_convs, blocks=(3, 4, 6, 3), seed=3)
  out = str(tmp_path / "rpn")
  convert.convert(ckpt, out)
  model, gen, variables = export.load_rpn(out)
  img = photo(image, 320, 1333)
  h, w = img.shape[:2]
  ph, pw = (-(-h // 32) * 32, -(-w // 32) * 32) if arch == "fpn" else (h, w)
  x = np.zeros((1, 3, ph, pw), np.float32)
  x[0, :, :h, :w] = img[..., ::-1].transpose(2, 0, 1) - np.array(
      offline_rpn.D2_PIXEL_MEAN, np.float32
  ).reshape(3, 1, 1)
  pre, post = (6000, 1000) if arch == "c4" else (1000, 1000)
  sd = torch.load(ckpt, weights_only=True)["model"]
  with torch.no_grad():
    raw, ref_boxes, ref_logits = _transcribed_rpn(sd, arch, torch.from_numpy(x), (h, w), pre, post)
  ours_in = np.zeros((1, ph, pw, 3), np.float32)
  ours_in[0, :h, :w] = normalize_images(img)
  logits, deltas = jax.jit(model.apply)(variables, jnp.asarray(ours_in))
  head = []
  for (lr, dr), lo, do in zip(raw, logits, deltas):
    n, a, hh, ww = lr.shape
    head.append(
        (
            np.abs(np.asarray(lo) - lr.permute(0, 2, 3, 1).numpy()).max(),
            np.abs(np.asarray(do) - dr.view(n, a, 4, hh, ww).permute(0, 3, 4, 1, 2).numpy()).max(),
            float(lr.abs().max()),
        )
    )
  hw = jnp.asarray([[h, w]], jnp.float32)
  boxes, scores, valid = inference.rpn_proposals(
      model, gen, RPNSettings(), variables, jnp.asarray(ours_in), hw, pre, post
  )
  ours = (np.asarray(boxes[0]), np.asarray(scores[0]), np.asarray(valid[0]))
  compare(f"transcription {arch}", head, ref_boxes, ref_logits, ours)
