"""First day with the official RegionCLIP release, without downloads: each command of the README
section "Using the official RegionCLIP checkpoints" on files in the released layouts.

Files (tests/official_release.py): a folder laid out as the official repository with its
downloads. Data: a COCO-format and an LVIS-format json of four scikit-image photos (astronaut,
chelsea, coffee, stereo motorcycle; boxes placed by hand on the full-size photos) with the real
category ids and names: COCO's 80 categories (OVD base person / spoon / motorcycle / bench, novel
cat / cup), LVIS v1's 1203 with their frequencies (rare space_shuttle is novel, common jumpsuit
and frequent others base) and the LVIS image fields (coco_url, neg_category_ids,
not_exhaustive_category_ids). Checkpoints, random weights in the official key layouts, saved with
torch.save as `{"model": state_dict}`: a pretrained RegionCLIP (`backbone.*`,
`teacher_backbone.*`, `lang_encoder.*`), fine-tuned detectors (`backbone.*` +
`roi_heads.box_predictor.*` + their offline-RPN copy), the offline RPNs (detectron2 R-50 C4 /
FPN names, `proposal_generator.rpn_head.*`, the LSJ variant with FPN norms and two head convs)
and the class-embedding tensors (48 / 65 / 866 / 1203 rows). The CLIP is the tiny ResNet
(`tiny_rn`, 64-d) and the RPNs have one block per stage: the loaders read any size from the
shapes. The default tests run the commands in-process at a 128 px test size; the slow one runs
every command line as the README writes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage.data")

from configs import finetune as finetune_config  # noqa: E402
from configs import zero_shot as zero_shot_config  # noqa: E402
from official_release import (  # noqa: E402
    COCO_IMAGES,
    COCO_VAL,
    EMB,
    LVIS_IMAGES,
    LVIS_VAL,
    PHOTOS,
    PRETRAINED,
    REPO,
    RPN_COCO,
    RPN_LVIS,
    write_checkpoints,
    write_datasets,
)
from regionclip_jax.data.categories import COCO_CATEGORIES, read_lvis_v1_categories  # noqa: E402


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """A folder laid out as the official repository with its downloads (module scope: built
  once) -> path(relative path) -> absolute path. `configs/` links to ours, so that the README's
  commands run in it as they are."""
  root = str(tmp_path_factory.mktemp("release"))
  write_datasets(root)
  write_checkpoints(root)
  os.symlink(os.path.join(REPO, "configs"), os.path.join(root, "configs"))
  return lambda rel="": os.path.join(root, rel)


# ----------------------------------------------------------------------------- the commands

# README "Using the official RegionCLIP checkpoints", in order (a converted detector before its
# evaluation), each as one line (the README breaks them with backslashes)
_ZS = "python -m regionclip_jax.tools.zero_shot"
_EVAL = "python -m regionclip_jax.tools.evaluate"
_CONVERT = "python -m regionclip_jax.tools.convert"
_MAIN = "python -m regionclip_jax.main"
_PRE = f"--checkpoint={PRETRAINED}"
_COCO = f"--annotations={COCO_VAL} --images={COCO_IMAGES}"
_LVIS = f"--annotations={LVIS_VAL} --images={LVIS_IMAGES}"
_DETS = "--output=output/{0}/lvis_metrics.json --detections=output/{0}/detections.json"
_TRAIN = (
    "--config.model.init_checkpoint={pre} --config.rpn.checkpoint=pretrained_ckpt/rpn/{rpn}.pth "
    "--config.data.train_embeddings={train_emb} --config.data.test_embeddings={test_emb} "
    "--config.data.train_annotations={train} --config.data.train_images={train_images} "
    "--config.data.test_annotations={test} --config.data.test_images={test_images}"
)
COMMANDS = [
    f"{_ZS} --preset=official_coco_gt {_PRE} --embeddings={EMB.format('coco_65')} {_COCO} "
    "--output=output/zs_coco_gt",
    f"{_ZS} --preset=official_coco_rpn {_PRE} --embeddings={EMB.format('coco_65')} "
    f"--rpn={RPN_LVIS} {_COCO} --output=output/zs_coco_rpn",
    f"{_ZS} --preset=official_lvis_gt {_PRE} --embeddings={EMB.format('lvis_1203')} {_LVIS} "
    "--output=output/zs_lvis_gt",
    f"{_EVAL} --split=lvis --annotations={LVIS_VAL} {_DETS.format('zs_lvis_gt')}",
    f"{_ZS} --preset=official_lvis_rpn {_PRE} --embeddings={EMB.format('lvis_1203')} "
    f"--rpn={RPN_LVIS} {_LVIS} --output=output/zs_lvis_rpn",
    f"{_EVAL} --split=lvis --annotations={LVIS_VAL} {_DETS.format('zs_lvis_rpn')}",
    f"{_CONVERT} --input=pretrained_ckpt/regionclip/regionclip_finetuned-coco_rn50.pth "
    "--output=pretrained_ckpt/converted/finetuned-coco_rn50",
    f"{_ZS} --preset=official_coco_detector "
    "--checkpoint=pretrained_ckpt/converted/finetuned-coco_rn50 "
    f"--embeddings={EMB.format('coco_65')} --rpn={RPN_COCO} {_COCO} --output=output/coco_detector",
    f"{_CONVERT} --input=pretrained_ckpt/regionclip/regionclip_finetuned-lvis_rn50.pth "
    "--output=pretrained_ckpt/converted/finetuned-lvis_rn50",
    f"{_ZS} --preset=official_lvis_detector "
    "--checkpoint=pretrained_ckpt/converted/finetuned-lvis_rn50 "
    f"--embeddings={EMB.format('lvis_1203')} --rpn=pretrained_ckpt/rpn/rpn_lvis_866_lsj.pth "
    f"{_LVIS} --output=output/lvis_detector",
    f"{_EVAL} --split=lvis --annotations={LVIS_VAL} {_DETS.format('lvis_detector')}",
    f"{_MAIN} --config=configs/finetune.py:coco_transfer --workdir=output/transfer_coco "
    + _TRAIN.format(
        pre=PRETRAINED,
        rpn="rpn_coco_48",
        train_emb=EMB.format("coco_48_base"),
        test_emb=EMB.format("coco_65"),
        train="datasets/coco/annotations/ovd_ins_train2017_b.json",
        train_images="datasets/coco/train2017",
        test=COCO_VAL,
        test_images=COCO_IMAGES,
    ),
    f"{_MAIN} --config=configs/finetune.py:lvis_transfer --workdir=output/transfer_lvis "
    + _TRAIN.format(
        pre=PRETRAINED,
        rpn="rpn_lvis_866_lsj",
        train_emb=EMB.format("lvis_866_base"),
        test_emb=EMB.format("lvis_1203"),
        train="datasets/lvis/lvis_v1_train.json",
        train_images=LVIS_IMAGES,
        test=LVIS_VAL,
        test_images=LVIS_IMAGES,
    ),
    f"{_ZS} --preset=official_folder {_PRE} --embeddings={EMB.format('lvis_1203')} "
    f"--rpn={RPN_LVIS} --images=datasets/custom_images --output=output/regions",
    f"python -m regionclip_jax.tools.extract_region_features {_PRE} --rpn={RPN_LVIS} "
    f"--embeddings={EMB.format('lvis_1203')} --images=datasets/custom_images "
    "--output=output/region_feats",
    f"python -m regionclip_jax.tools.extract_concept_features {_PRE} "
    "--concepts=datasets/custom_concepts/concepts.txt --output=output/concept_feats/concept_embeds.npy",
]


def zero_shot(preset: str, workdir: str, **fields) -> dict:
  """`tools.zero_shot --preset=PRESET --<field>=...` in-process (the tool builds this config and
  runs it with the workdir --output) at the default tests' size."""
  from regionclip_jax.tools import zero_shot as tool

  cfg = zero_shot_config.get_config(preset)
  cfg.zero_shot.update(dict(test_size=128, max_size=160, **fields))
  return tool.run(cfg, workdir)


def evaluate(annotations: str, detections: str, split: str, output: str) -> dict:
  from regionclip_jax.tools import evaluate as tool

  return tool.run(annotations, detections, split, output)


def transfer(preset: str, workdir: str, keys: dict) -> dict:
  """`main --config=configs/finetune.py:PRESET --config.<key>=...` in-process, 2 steps."""
  from regionclip_jax.detection import run as detection_run

  cfg = finetune_config.get_config(preset)
  for key, value in {**SHORT_TRANSFER, **keys}.items():
    section, name = key.split(".")
    cfg[section][name] = value
  return detection_run.run(cfg, workdir)


SHORT_TRANSFER = {  # 2 steps of batch 2, in-process data reading
    "train.num_steps": 2,
    "train.batch_size": 2,
    "train.log_every": 1,
    "optimizer.warmup_steps": 1,
    "data.num_workers": 0,
}
SMALL_TRANSFER = {  # the default tests' image size
    "data.short_edge_lengths": (128,),
    "data.test_size": 128,
    "data.max_size": 160,
}


def _results(path: str) -> list:
  """A COCO results json: a list of {image_id, category_id, bbox [x, y, w, h], score}."""
  with open(path) as f:
    dets = json.load(f)
  assert isinstance(dets, list) and dets, path
  for d in dets:
    assert {"image_id", "category_id", "bbox", "score"} <= set(d) and len(d["bbox"]) == 4
  return dets


def _metrics(path: str, *keys) -> dict:
  with open(path) as f:
    m = json.load(f)
  for k in keys:
    assert isinstance(m.get(k), float) and np.isfinite(m[k]), (k, m.get(k))
  return m


# ----------------------------------------------------------------------------- default tests


def test_readme_lists_these_commands():
  """The README section holds each command above (its backslash breaks joined)."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  section = text.split("## Using the official RegionCLIP checkpoints")[1].split("\n## ")[0]
  joined = " ".join(section.replace("\\\n", " ").split())
  for command in COMMANDS:
    assert command in joined, command


def test_zero_shot_coco_gt_and_rpn(release, tmp_path, monkeypatch):
  """test_zeroshot_inference.sh, COCO: the pretrained .pth as it is, the 65-class embeddings,
  GT boxes; then the RPN proposals of rpn_lvis_866.pth (FPN), also as it is, at the official
  offline-RPN NMS 0.9."""
  from regionclip_jax.tools import zero_shot as tool

  seen = []
  original = tool.evaluate_annotations
  monkeypatch.setattr(
      tool,
      "evaluate_annotations",
      lambda det, *a, **k: seen.append(det.predictor.rpn_settings.nms_thresh)
      or original(det, *a, **k),
  )
  common = dict(
      checkpoint=release(PRETRAINED),
      embeddings=release(EMB.format("coco_65")),
      annotations=release(COCO_VAL),
      images=release(COCO_IMAGES),
  )
  for boxes, rpn in (("gt", ""), ("rpn", release(RPN_LVIS))):
    out = str(tmp_path / boxes)
    m = zero_shot(f"official_coco_{boxes}", out, rpn=rpn, **common)
    assert m["num_categories_with_gt"] == {"novel": 2, "base": 4, "all": 6}
    _metrics(os.path.join(out, "zero_shot_metrics.json"), "AP50_novel", "AP50_base", "AP50_all")
    dets = _results(os.path.join(out, "detections.json"))
    cats = {d["category_id"] for d in dets}
    assert cats <= {c["id"] for c in COCO_CATEGORIES} and len(cats) > 1
    assert max(np.bincount([d["image_id"] for d in dets])) <= 100  # DETECTIONS_PER_IMAGE
  assert seen[-1] == 0.9


def test_zero_shot_lvis_gt_then_lvis_metrics(release, tmp_path):
  """test_zeroshot_inference.sh, LVIS GT boxes with lvis_1203_cls_emb.pth; the detections
  scored with the lvis package (APr, APc, APf) by tools.evaluate."""
  out = str(tmp_path / "lvis_gt")
  zero_shot(
      "official_lvis_gt",
      out,
      checkpoint=release(PRETRAINED),
      embeddings=release(EMB.format("lvis_1203")),
      annotations=release(LVIS_VAL),
      images=release(LVIS_IMAGES),
  )
  _metrics(os.path.join(out, "zero_shot_metrics.json"), "AP50_novel", "AP50_base")
  dets = os.path.join(out, "detections.json")
  assert max(np.bincount([d["image_id"] for d in _results(dets)])) <= 300
  evaluate(release(LVIS_VAL), dets, "lvis", str(tmp_path / "m.json"))
  _metrics(str(tmp_path / "m.json"), "AP", "APr", "APc", "APf")


def test_convert_and_evaluate_released_coco_detector(release, tmp_path):
  """test_transfer_learning.sh, COCO: tools.convert turns the fine-tuned detector into an
  export; it runs on rpn_coco_48.pth's proposals with soft-NMS; tools.evaluate scores the
  detections (AP50 novel / base / all)."""
  from regionclip_jax.detection import export
  from regionclip_jax.tools import convert

  det = str(tmp_path / "finetuned-coco_rn50")
  pth = release("pretrained_ckpt/regionclip/regionclip_finetuned-coco_rn50.pth")
  assert convert.main([f"--input={pth}", f"--output={det}"]) == 0
  meta = export.read_meta(det, "detector")
  assert (meta["num_classes"], meta["train_num_classes"], meta["pooler_resolution"]) == (65, 48, 4)
  out = str(tmp_path / "eval")
  zero_shot(
      "official_coco_detector",
      out,
      checkpoint=det,
      rpn=release(RPN_COCO),
      embeddings=release(EMB.format("coco_65")),
      annotations=release(COCO_VAL),
      images=release(COCO_IMAGES),
  )
  _metrics(os.path.join(out, "zero_shot_metrics.json"), "AP50_novel", "AP50_base", "AP50_all")
  dets = os.path.join(out, "detections.json")
  evaluate(release(COCO_VAL), dets, "coco_ovd", str(tmp_path / "m.json"))
  _metrics(str(tmp_path / "m.json"), "AP", "AP50_novel", "AP50_base", "AP50_all")


def test_transfer_from_released_files(release, tmp_path):
  """train_transfer_learning.sh, COCO: coco_transfer from the pretrained .pth, rpn_coco_48.pth
  and the 48 / 65-class embedding files, all as released; 2 steps, then the evaluation."""
  wd = str(tmp_path / "transfer")
  keys = {
      "model.init_checkpoint": release(PRETRAINED),
      "rpn.checkpoint": release(RPN_COCO),
      "data.train_embeddings": release(EMB.format("coco_48_base")),
      "data.test_embeddings": release(EMB.format("coco_65")),
      "data.train_annotations": release("datasets/coco/annotations/ovd_ins_train2017_b.json"),
      "data.train_images": release("datasets/coco/train2017"),
      "data.test_annotations": release(COCO_VAL),
      "data.test_images": release(COCO_IMAGES),
  }
  m = transfer("coco_transfer", wd, {**keys, **SMALL_TRANSFER})
  assert np.isfinite(m["AP50_all"])
  _metrics(os.path.join(wd, "metrics.json"), "AP50_novel", "AP50_base", "AP50_all")
  with open(os.path.join(wd, "export", "model.json")) as f:
    meta = json.load(f)
  assert meta["pooler_resolution"] == 4 and len(meta["base_names"]) == 48  # from the checkpoint


def test_folder_figures(release, tmp_path):
  """visualize_zeroshot_inference.sh: the pretrained .pth on a folder, the 1203 LVIS classes of
  lvis_1203_cls_emb.pth, rpn_lvis_866.pth's proposals: a figure per image and detections.json."""
  out = str(tmp_path / "regions")
  got = zero_shot(
      "official_folder",
      str(tmp_path / "wd"),
      checkpoint=release(PRETRAINED),
      embeddings=release(EMB.format("lvis_1203")),
      rpn=release(RPN_LVIS),
      images=release("datasets/custom_images"),
      output=out,
  )
  assert got["num_images"] == len(PHOTOS) and got["num_skipped"] == 0
  figures = sorted(f for f in os.listdir(out) if f.endswith(".png"))
  assert figures == [f"{i:012d}.png" for i in range(1, len(PHOTOS) + 1)]
  names = {d["category_name"] for d in _results(os.path.join(out, "detections.json"))}
  assert names <= {c["name"] for c in read_lvis_v1_categories()}
  # MODEL.CLIP.VIS: the scores shown are the un-fused probabilities, so none is above 1
  scores = [d["score"] for d in _results(os.path.join(out, "detections.json"))]
  assert scores and max(scores) <= 1.0


def test_region_and_concept_features(release, tmp_path):
  """extract_region_features.sh (RPN regions of rpn_lvis_866.pth, classified with the 1203
  LVIS embeddings) and extract_concept_features.sh (the pretrained .pth's text tower)."""
  from configs import extract_region_features as extract_config
  from regionclip_jax.tools import extract_concept_features, extract_region_features

  cfg = extract_config.get_config()
  cfg.extract.update(
      checkpoint=release(PRETRAINED),
      rpn=release(RPN_LVIS),
      embeddings=release(EMB.format("lvis_1203")),
      images=release("datasets/custom_images"),
      output=str(tmp_path / "region_feats"),
      test_size=128,
      max_size=160,
  )
  assert extract_region_features.run(cfg)["written"] == len(PHOTOS)
  with np.load(tmp_path / "region_feats" / "000000000001.npz") as z:
    assert z["feats"].shape[1] == 64 and z["probs"].shape[1] == 1203 + 1
  out = str(tmp_path / "concept_embeds.npy")
  argv = [f"--checkpoint={release(PRETRAINED)}", f"--output={out}"]
  argv.append(f"--concepts={release('datasets/custom_concepts/concepts.txt')}")
  assert extract_concept_features.main(argv) == 0
  assert np.load(out).shape == (4, 64)


# ----------------------------------------------------------------------------- slow: the lines


def _run_line(root: str, line: str) -> subprocess.CompletedProcess:
  """One README command in the release folder; transfer jobs shortened to 2 steps."""
  argv = line.split()
  argv[0] = sys.executable
  if "regionclip_jax.main" in line:
    argv += [f"--config.{k}={v}" for k, v in SHORT_TRANSFER.items()]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_every_readme_command_line(release):
  """Each README command line, as written (official sizes: 800 / 1333), in a folder laid out as
  the official repository with its downloads."""
  root = release()
  for line in COMMANDS:
    out = _run_line(root, line)
    assert out.returncode == 0 and "Traceback" not in out.stderr, (line, out.stderr[-3000:])
  o = os.path.join(root, "output")
  for name in ("zs_coco_gt", "zs_coco_rpn", "coco_detector"):
    _metrics(os.path.join(o, name, "zero_shot_metrics.json"), "AP50_novel", "AP50_base")
    _results(os.path.join(o, name, "detections.json"))
  for name in ("zs_lvis_gt", "zs_lvis_rpn", "lvis_detector"):
    _metrics(os.path.join(o, name, "lvis_metrics.json"), "AP", "APr", "APc", "APf")
  for name in ("transfer_coco", "transfer_lvis"):
    _metrics(os.path.join(o, name, "metrics.json"), "AP50_novel", "AP50_base", "AP50_all")
  assert len([f for f in os.listdir(os.path.join(o, "regions")) if f.endswith(".png")]) == 4
  assert len(os.listdir(os.path.join(o, "region_feats"))) == 4
  assert np.load(os.path.join(o, "concept_feats", "concept_embeds.npy")).shape == (4, 64)
