"""detectron2 RPN checkpoints (the official offline RPNs) -> Flax params of `DetectronRPN`.

File layout (detectron2's `DetectionCheckpointer`: `{"model": state_dict, ...}`, torch zip):
- C4 (`rpn_coco_48.pth`): `backbone.stem.conv1.{weight, norm.*}`, `backbone.res{2..4}.{b}.
  {conv1, conv2, conv3, shortcut}.{weight, norm.*}`;
- FPN (`rpn_lvis_866*.pth`): the same under `backbone.bottom_up.` with res5, and
  `backbone.fpn_{lateral, output}{2..5}.{weight, bias}` (`.norm.*` and no bias when the FPN has a
  norm, as in the LSJ RPN);
- `proposal_generator.rpn_head.{conv, objectness_logits, anchor_deltas}.{weight, bias}`, the conv
  as `conv.conv{i}` when the head has several (LSJ: CONV_DIMS [-1, -1]);
- norms hold `weight`, `bias`, `running_mean`, `running_var` (FrozenBN; SyncBN adds
  `num_batches_tracked`, dropped); `roi_heads.*` (box / mask heads) and `pixel_mean` / `pixel_std`
  are not part of the RPN and are ignored, as RegionCLIP's loader keeps only `backbone*` and
  `proposal_generator*` (`detectron2/checkpoint/clip_model_loading.py`, `bb_rpn_weights`).
A RegionCLIP detector's own copy (`offline_backbone.*`, `offline_proposal_generator.*`) reads the
same way.

Renaming: torch conv weights [O, I, kh, kw] -> Flax kernels [kh, kw, I, O]; norm weight / bias /
running_mean / running_var -> FrozenBatchNorm scale / bias / mean / var; `res3.1` -> `res3_1`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from regionclip_jax.models.checkpoints.errors import CheckpointError

_NORM = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_STEMS = ("backbone.stem.conv1.weight", "backbone.bottom_up.stem.conv1.weight")
_BLOCK = re.compile(r"(res[2-5])\.(\d+)\.(conv[123]|shortcut)\.(.+)")
_FPN = re.compile(r"(fpn_(?:lateral|output)[2-5])\.(.+)")
_HEAD = re.compile(r"(conv(?:\.conv\d+)?|objectness_logits|anchor_deltas)\.(weight|bias)")


def _prefixes(keys) -> tuple[str, str] | None:
  """(backbone prefix, proposal-generator prefix) of an RPN state dict, or None."""
  keys = set(keys)
  for pre in ("", "offline_"):
    if any(pre + s in keys for s in _STEMS) and any(
        k.startswith(pre + "proposal_generator.rpn_head.") for k in keys
    ):
      return pre + "backbone.", pre + "proposal_generator.rpn_head."
  return None


def is_detectron2_rpn(keys, offline: bool = False) -> bool:
  """A detectron2 ResNet backbone with an RPN head. `offline`: also a RegionCLIP detector's
  `offline_*` copy (such a file is a CLIP checkpoint first, so detection leaves it out)."""
  found = _prefixes(keys)
  return found is not None and (offline or not found[0].startswith("offline_"))


def _conv(w: np.ndarray, key: str, where: str) -> np.ndarray:
  if w.ndim != 4:
    raise CheckpointError(
        f"{__name__}: {where}: {key} should be a conv weight [O, I, kh, kw], found {w.shape}"
    )
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _set(tree: dict, path: list[str], value: np.ndarray):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = np.asarray(value, np.float32)


def _conv_norm_leaf(rest: str, key: str, where: str) -> list[str] | None:
  """The tail of a detectron2 `Conv2d` key (`weight`, `bias`, `norm.<stat>`) -> its path inside
  our conv + norm module, or None for a counter that is not a weight."""
  if rest == "weight":
    return ["conv", "kernel"]
  if rest == "bias":
    return ["conv", "bias"]
  if rest.startswith("norm."):
    stat = rest[len("norm.") :]
    if stat == "num_batches_tracked":
      return None
    if stat in _NORM:
      return ["norm", _NORM[stat]]
  raise CheckpointError(f"{__name__}: {where}: unexpected key {key}")


def detectron2_rpn_params(sd: dict[str, Any], where: str) -> tuple[dict, dict]:
  """Flat detectron2 state dict (numpy, `model.` unwrapped) -> (spec, Flax params tree).

  spec: arch ("c4" | "fpn"), blocks_per_stage, fpn_norm, rpn_convs, num_anchors, as read from
  the keys and shapes (what a config would say but the checkpoint does not store: anchor sizes,
  strides, pixel statistics, is the RPN config's; see `detection/offline_rpn.py`)."""
  found = _prefixes(sd)
  if found is None:
    raise CheckpointError(
        f"{__name__}: {where}: not a detectron2 RPN checkpoint: expected {_STEMS[0]} or {_STEMS[1]} and "
        f"proposal_generator.rpn_head.* (first keys: {list(sd)[:4]})"
    )
  bb, head = found
  fpn = bb + "bottom_up.stem.conv1.weight" in sd
  trunk = bb + "bottom_up." if fpn else bb
  params: dict = {}
  blocks: dict[str, set] = {}
  fpn_norm = False
  convs = set()
  for key, value in sd.items():
    value = np.asarray(value)
    if key.startswith(trunk + "stem.conv1."):
      leaf = _conv_norm_leaf(key[len(trunk + "stem.conv1.") :], key, where)
      if leaf:
        v = _conv(value, key, where) if leaf[-1] == "kernel" else value
        _set(params, ["backbone", "stem"] + leaf, v)
    elif key.startswith(trunk + "res"):
      m = _BLOCK.fullmatch(key[len(trunk) :])
      if not m:
        raise CheckpointError(f"{__name__}: {where}: unexpected backbone key {key}")
      stage, b, conv, rest = m.groups()
      if not fpn and stage == "res5":
        continue  # a C4 detector's res5 belongs to its RoI head
      blocks.setdefault(stage, set()).add(int(b))
      leaf = _conv_norm_leaf(rest, key, where)
      if leaf:
        v = _conv(value, key, where) if leaf[-1] == "kernel" else value
        _set(params, ["backbone", f"{stage}_{b}", conv] + leaf, v)
    elif fpn and key.startswith(bb + "fpn_"):
      m = _FPN.fullmatch(key[len(bb) :])
      if not m:
        raise CheckpointError(f"{__name__}: {where}: unexpected FPN key {key}")
      name, rest = m.groups()
      leaf = _conv_norm_leaf(rest, key, where)
      if leaf:
        fpn_norm |= leaf[0] == "norm"
        v = _conv(value, key, where) if leaf[-1] == "kernel" else value
        _set(params, ["fpn", name] + leaf, v)
    elif key.startswith(head):
      m = _HEAD.fullmatch(key[len(head) :])
      if not m:
        raise CheckpointError(f"{__name__}: {where}: unexpected RPN head key {key}")
      name, kind = m.groups()
      name = name.split(".")[-1]  # conv.conv0 -> conv0
      if name.startswith("conv"):
        convs.add(name)
      _set(
          params,
          ["rpn_head", name, "kernel" if kind == "weight" else "bias"],
          _conv(value, key, where) if kind == "weight" else value,
      )
    elif key.startswith(bb):
      raise CheckpointError(f"{__name__}: {where}: unexpected backbone key {key}")
  stages = ("res2", "res3", "res4", "res5") if fpn else ("res2", "res3", "res4")
  counts = []
  for s in stages:
    ids = blocks.get(s, set())
    if not ids or ids != set(range(len(ids))):
      raise CheckpointError(
          f"{__name__}: {where}: {trunk}{s}.* should hold blocks 0..n-1, found {sorted(ids) or 'none'}"
      )
    counts.append(len(ids))
  if not fpn:
    counts.append(3)  # res5 is not built for C4; its count only completes the depth
  obj = params.get("rpn_head", {}).get("objectness_logits", {}).get("kernel")
  if obj is None:
    raise CheckpointError(f"{__name__}: {where}: {head}objectness_logits.weight is missing")
  if "conv" in convs and len(convs) > 1:
    raise CheckpointError(
        f"{__name__}: {where}: {head} mixes conv and conv.conv<i> layers: {sorted(convs)}"
    )
  spec = {
      "arch": "fpn" if fpn else "c4",
      "blocks_per_stage": counts,
      "fpn_norm": fpn_norm,
      "rpn_convs": len(convs),
      "num_anchors": int(obj.shape[-1]),
  }
  return spec, params


def detectron2_key(path: tuple[str, ...], arch: str) -> str:
  """Our param path (e.g. ("backbone", "res2_0", "conv1", "norm", "var")) -> the detectron2 key
  it is read from ("backbone.res2.0.conv1.norm.running_var"), for error messages."""
  stats = {v: k for k, v in _NORM.items()}
  top, *rest = path
  if top == "rpn_head":
    name = f"conv.{rest[0]}" if re.fullmatch(r"conv\d+", rest[0]) else rest[0]
    return f"proposal_generator.rpn_head.{name}.{'weight' if rest[-1] == 'kernel' else 'bias'}"
  if top == "fpn":
    prefix, leaf = f"backbone.{rest[0]}", rest[1:]
  else:
    trunk = "backbone.bottom_up." if arch == "fpn" else "backbone."
    if rest[0] == "stem":
      prefix, leaf = trunk + "stem.conv1", rest[1:]
    else:
      stage, block = rest[0].split("_")
      prefix, leaf = f"{trunk}{stage}.{block}.{rest[1]}", rest[2:]
  if leaf and leaf[0] == "norm":
    return f"{prefix}.norm.{stats[leaf[-1]]}"
  return f"{prefix}.{'weight' if leaf[-1] == 'kernel' else 'bias'}"
