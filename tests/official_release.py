"""The official RegionCLIP release without downloads, for tests: a folder laid out as the
official repository with its downloads (`pretrained_ckpt/`, `datasets/`), with real photos and
random weights in the released key layouts (tests/test_official_first_day.py describes them).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import skimage.data as skd
import torch
from PIL import Image

from regionclip_jax.data.categories import COCO_CATEGORIES, COCO_OVD_BASE, read_lvis_v1_categories
from regionclip_jax.detection import builders
from regionclip_jax.models.clip import CLIP, get_config
from regionclip_jax.models.convert_openai import state_dict_from_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# boxes x0 y0 x1 y1 on the full-size photos: (COCO name or None, LVIS name, box)
PHOTOS = {
    "astronaut": [
        ("person", "person", (20, 15, 365, 512)),
        (None, "flag", (0, 0, 95, 512)),
        (None, "space_shuttle", (355, 0, 470, 280)),
        (None, "helmet", (280, 340, 512, 512)),
        (None, "jumpsuit", (20, 150, 365, 512)),
    ],
    "chelsea": [("cat", "cat", (0, 0, 451, 300))],
    "coffee": [
        ("cup", "cup", (170, 15, 415, 305)),
        ("spoon", "spoon", (325, 65, 425, 325)),
        (None, "saucer", (75, 70, 480, 385)),
    ],
    "stereo_motorcycle": [
        ("motorcycle", "motorcycle", (95, 75, 685, 450)),
        ("bench", "bench", (40, 105, 290, 310)),
    ],
}


# ----------------------------------------------------------------------------- datasets


def photo(name: str) -> np.ndarray:
  img = getattr(skd, name)()
  return img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disp)


def _coco_and_lvis(images: str, split: str, size: int) -> tuple[dict, dict]:
  """The photos as `images`/<id>.jpg (longer side `size` px) -> (COCO json, LVIS json)."""
  os.makedirs(images, exist_ok=True)
  lvis_cats = read_lvis_v1_categories()
  lvis_id = {c["name"]: c["id"] for c in lvis_cats}
  coco_id = {c["name"]: c["id"] for c in COCO_CATEGORIES}
  coco = {"images": [], "annotations": [], "categories": [dict(c) for c in COCO_CATEGORIES]}
  lvis = {"images": [], "annotations": [], "categories": []}
  for image_id, (name, boxes) in enumerate(PHOTOS.items(), 1):
    img = photo(name)
    scale = size / max(img.shape[:2])
    w, h = round(img.shape[1] * scale), round(img.shape[0] * scale)
    file_name = f"{image_id:012d}.jpg"
    Image.fromarray(img).resize((w, h)).save(os.path.join(images, file_name))
    url = f"http://images.cocodataset.org/{split}/{file_name}"
    coco["images"].append({"id": image_id, "file_name": file_name, "height": h, "width": w})
    present = {lvis_id[n] for _, n, _ in boxes}
    # verified absent: the other images' classes (what LVIS's federated AP counts against)
    absent = sorted({lvis_id[n] for b in PHOTOS.values() for _, n, _ in b} - present)
    lvis["images"].append(
        {
            "id": image_id,
            "coco_url": url,
            "height": h,
            "width": w,
            "neg_category_ids": absent,
            "not_exhaustive_category_ids": [],
        }
    )
    for coco_name, lvis_name, box in boxes:
      a, b = box[0] * scale, box[1] * scale
      c, d = min(box[2] * scale, w), min(box[3] * scale, h)  # rounding may overshoot by < 1 px
      xywh = [round(a, 2), round(b, 2), round(c - a, 2), round(d - b, 2)]
      ann = {"image_id": image_id, "bbox": xywh, "area": round(xywh[2] * xywh[3], 2)}
      lvis["annotations"].append(
          dict(ann, id=len(lvis["annotations"]) + 1, category_id=lvis_id[lvis_name])
      )
      if coco_name:
        coco["annotations"].append(
            dict(ann, id=len(coco["annotations"]) + 1, category_id=coco_id[coco_name], iscrowd=0)
        )
  counts = {}
  for a in lvis["annotations"]:
    counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
  lvis["categories"] = [
      dict(c, image_count=counts.get(c["id"], 0), instance_count=counts.get(c["id"], 0))
      for c in lvis_cats
  ]
  return coco, lvis


def _write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def write_datasets(root: str, size: int = 160) -> None:
  """The official repository's dataset layout (its datasets/README.md) under `root`/datasets:
  coco/{train,val}2017/*.jpg, coco/annotations/ovd_ins_{train2017_b,val2017_all}.json (the
  OVR-CNN split files: base annotations only for training), lvis/lvis_v1_{train,val}.json (image
  root coco/), custom_images/ and custom_concepts/concepts.txt."""
  d = os.path.join(root, "datasets")
  for split in ("train2017", "val2017"):
    coco, lvis = _coco_and_lvis(os.path.join(d, "coco", split), split, size)
    if split == "train2017":
      base = {c["id"] for c in COCO_CATEGORIES if c["name"] in COCO_OVD_BASE}
      coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] in base]
    part = "train2017_b" if split == "train2017" else "val2017_all"
    _write_json(os.path.join(d, "coco", "annotations", f"ovd_ins_{part}.json"), coco)
    _write_json(os.path.join(d, "lvis", f"lvis_v1_{split[:-4]}.json"), lvis)
  _coco_and_lvis(os.path.join(d, "custom_images"), "val2017", size)
  os.makedirs(os.path.join(d, "custom_concepts"))
  with open(os.path.join(d, "custom_concepts", "concepts.txt"), "w") as f:
    f.write("person\ncat\ncoffee cup\nmotorcycle\n")


# ----------------------------------------------------------------------------- checkpoints


def tiny_clip_params(seed: int = 0):
  """(tiny_rn config, random numpy params)."""
  cfg = get_config("tiny_rn")
  shapes = jax.eval_shape(
      CLIP(cfg).init,
      jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
      jax.ShapeDtypeStruct((1, 77), jnp.int32),
  )
  return cfg, jax.tree.map(np.asarray, builders.numpy_init(shapes, seed=seed)["params"])


def _tensors(sd: dict) -> dict:
  # a copy: torch warns on (and must not write into) read-only arrays such as np.load's
  return {k: torch.from_numpy(np.array(v, np.float32, order="C")) for k, v in sd.items()}


def pretrained_state(params) -> dict:
  """A RegionCLIP pretraining checkpoint's state dict: student and teacher image towers, the
  text tower as `lang_encoder.*` (OpenAI names, no logit scale, no BN counters)."""
  sd = state_dict_from_params(params, num_batches_tracked=False)
  out = {}
  for k, v in sd.items():
    if k.startswith("visual."):
      out["backbone." + k[len("visual.") :]] = v
      out["teacher_backbone." + k[len("visual.") :]] = v
    elif k != "logit_scale":
      out["lang_encoder." + k] = v
  return _tensors(out)


def detector_state(params, rng, k_train: int, k_test: int, rpn: dict) -> dict:
  """A fine-tuned detector (CLIPFastRCNN, C4): the image tower as `backbone.*`, the text
  classifier box predictor (cls_score [K, D] frozen base embeddings, test_cls_score [K', D],
  zero cls_bg_score, class-agnostic bbox_pred) and `offline_*` copies of the RPN `rpn`."""
  dim = params["visual"]["attnpool"]["c_proj"]["kernel"].shape[-1]
  sd = {
      "backbone." + k[len("visual.") :]: v
      for k, v in state_dict_from_params({"visual": params["visual"]}).items()
  }
  p = "roi_heads.box_predictor."
  sd[p + "cls_score.weight"] = rng.normal(size=(k_train, dim))
  sd[p + "test_cls_score.weight"] = rng.normal(size=(k_test, dim))
  sd[p + "cls_bg_score.weight"] = np.zeros((1, dim))
  sd[p + "bbox_pred.weight"] = rng.normal(size=(4, dim)) * 0.01
  sd[p + "bbox_pred.bias"] = np.zeros(4)
  out = _tensors(sd)
  out.update({"offline_" + k: v for k, v in rpn.items()})
  return out


def _conv_norm(sd, rng, key, out_c, in_c, k, norm=True, bias=False):
  sd[key + ".weight"] = rng.normal(0, (2.0 / (in_c * k * k)) ** 0.5, (out_c, in_c, k, k))
  if bias:
    sd[key + ".bias"] = np.zeros(out_c)
  if norm:
    sd[key + ".norm.weight"] = np.ones(out_c)
    sd[key + ".norm.bias"] = np.zeros(out_c)
    sd[key + ".norm.running_mean"] = rng.normal(0, 0.1, out_c)
    sd[key + ".norm.running_var"] = np.ones(out_c)


def rpn_state(arch: str = "c4", blocks=(1, 1, 1, 1), lsj: bool = False, seed: int = 0) -> dict:
  """An offline RPN in detectron2's names: MSRA ResNet (64-ch stem, 256..2048-ch stages, stride
  in the 1x1 conv) to res4 ("c4", rpn_coco_48) or res5 + FPN ("fpn", rpn_lvis_866; `lsj`:
  FPN norms without biases and two head convs, rpn_lvis_866_lsj), StandardRPNHead, plus the
  Mask R-CNN box-head entries the files carry (ignored by the reader)."""
  rng = np.random.default_rng(seed)
  sd = {}
  trunk = "backbone." if arch == "c4" else "backbone.bottom_up."
  _conv_norm(sd, rng, trunk + "stem.conv1", 64, 3, 7)
  stages = ("res2", "res3", "res4") if arch == "c4" else ("res2", "res3", "res4", "res5")
  in_c = 64
  for i, stage in enumerate(stages):
    out_c, mid = 256 * 2**i, 64 * 2**i
    for b in range(blocks[i]):
      key = f"{trunk}{stage}.{b}."
      _conv_norm(sd, rng, key + "conv1", mid, in_c if b == 0 else out_c, 1)
      _conv_norm(sd, rng, key + "conv2", mid, mid, 3)
      _conv_norm(sd, rng, key + "conv3", out_c, mid, 1)
      if b == 0:
        _conv_norm(sd, rng, key + "shortcut", out_c, in_c, 1)
    in_c = out_c
  if arch == "fpn":
    for lvl, c in zip(range(2, 6), (256, 512, 1024, 2048)):
      _conv_norm(sd, rng, f"backbone.fpn_lateral{lvl}", 256, c, 1, norm=lsj, bias=not lsj)
      _conv_norm(sd, rng, f"backbone.fpn_output{lvl}", 256, 256, 3, norm=lsj, bias=not lsj)
  ch, anchors = (1024, 15) if arch == "c4" else (256, 3)
  head = "proposal_generator.rpn_head."
  for conv in ("conv.conv0", "conv.conv1") if lsj else ("conv",):
    _conv_norm(sd, rng, head + conv, ch, ch, 3, norm=False, bias=True)
  _conv_norm(sd, rng, head + "objectness_logits", anchors, ch, 1, norm=False, bias=True)
  _conv_norm(sd, rng, head + "anchor_deltas", 4 * anchors, ch, 1, norm=False, bias=True)
  sd["roi_heads.box_predictor.cls_score.weight"] = rng.normal(size=(49, 8))
  return _tensors(sd)


def write_checkpoints(root: str) -> None:
  """The released files under `root`/pretrained_ckpt/{regionclip,rpn,concept_emb}, named as
  released (the official MODEL_ZOO.md)."""
  _, params = tiny_clip_params()
  rng = np.random.default_rng(1)
  ckpt = os.path.join(root, "pretrained_ckpt")
  for sub in ("regionclip", "rpn", "concept_emb"):
    os.makedirs(os.path.join(ckpt, sub))

  def save(name, obj):
    torch.save(obj, os.path.join(ckpt, name))

  save("regionclip/regionclip_pretrained-cc_rn50.pth", {"model": pretrained_state(params)})
  rpn = {"c4": rpn_state("c4"), "fpn": rpn_state("fpn"), "lsj": rpn_state("fpn", lsj=True)}
  save("rpn/rpn_coco_48.pth", {"model": rpn["c4"], "iteration": 90000})
  save("rpn/rpn_lvis_866.pth", {"model": rpn["fpn"]})
  save("rpn/rpn_lvis_866_lsj.pth", {"model": rpn["lsj"]})
  for split, k_train, k_test, r in (("coco", 48, 65, "c4"), ("lvis", 866, 1203, "lsj")):
    sd = detector_state(params, rng, k_train, k_test, rpn[r])
    save(f"regionclip/regionclip_finetuned-{split}_rn50.pth", {"model": sd})
  for name, k in (
      ("coco_48_base", 48),
      ("coco_65", 65),
      ("lvis_866_base", 866),
      ("lvis_1203", 1203),
  ):
    emb = torch.from_numpy(rng.normal(size=(k, 64)).astype(np.float32))
    save(f"concept_emb/{name}_cls_emb.pth", emb)


# ----------------------------------------------------------------------------- paths in it

PRETRAINED = "pretrained_ckpt/regionclip/regionclip_pretrained-cc_rn50.pth"
RPN_COCO = "pretrained_ckpt/rpn/rpn_coco_48.pth"
RPN_LVIS = "pretrained_ckpt/rpn/rpn_lvis_866.pth"
EMB = "pretrained_ckpt/concept_emb/{}_cls_emb.pth"
COCO_VAL = "datasets/coco/annotations/ovd_ins_val2017_all.json"
COCO_IMAGES = "datasets/coco/val2017"
LVIS_VAL = "datasets/lvis/lvis_v1_val.json"
LVIS_IMAGES = "datasets/coco"
