"""Bad official files: embeddings that do not fit, a file of another kind where one is expected,
class names a dataset lacks. Each is one line naming the file, what was expected and what was
found, raised by the loaders every command goes through (`detection.builders`,
`detection.export`, `models.checkpoints.{detect,embeddings}`), and nothing is written; then
one command line per tool, each ending with that line on stderr, no traceback, exit status != 0.

Files: the released layouts of tests/official_release.py (random weights, tiny sizes).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import official_release as release  # noqa: E402

from configs import finetune as finetune_config  # noqa: E402
from regionclip_jax.data.validation import DataError  # noqa: E402
from regionclip_jax.detection import builders, export  # noqa: E402
from regionclip_jax.detection.data import data_for  # noqa: E402
from regionclip_jax.models.checkpoints import CheckpointError  # noqa: E402

REPO = release.REPO


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """name -> path: the released kinds, embeddings of the wrong sizes, the datasets."""
  root = tmp_path_factory.mktemp("bad")
  release.write_datasets(str(root))
  _, params = release.tiny_clip_params()
  rng = np.random.default_rng(0)
  c4, fpn = release.rpn_state("c4"), release.rpn_state("fpn")
  out = {
      "coco": str(root / "datasets/coco/annotations/ovd_ins_val2017_all.json"),
      "coco_train": str(root / "datasets/coco/annotations/ovd_ins_train2017_b.json"),
      "images": str(root / "datasets/coco/val2017"),
      "train_images": str(root / "datasets/coco/train2017"),
  }
  saved = {
      "pretrained.pth": {"model": release.pretrained_state(params)},
      "pretrained_with_rpn.pth": {
          "model": {
              **release.pretrained_state(params),
              **{"offline_" + k: v for k, v in c4.items()},
          }
      },
      "detector.pth": {"model": release.detector_state(params, rng, 48, 65, c4)},
      "rpn_coco_48.pth": {"model": c4},
      "rpn_lvis_866.pth": {"model": fpn},
      "coco_48_base_cls_emb.pth": torch.randn(48, 64),
      "coco_65_cls_emb.pth": torch.randn(65, 64),
      "coco_65_cls_emb_rn50x4.pth": torch.randn(65, 640),
  }
  for name, obj in saved.items():
    out[name] = str(root / name)
    torch.save(obj, out[name])
  return out


def _one_line(fn, error=CheckpointError, *parts) -> str:
  """`fn()` raises `error` (InputFileError: a CheckpointError and a DataError) with a one-line
  message holding every part."""
  with pytest.raises(error) as info:
    fn()
  msg = str(info.value)
  assert isinstance(info.value, DataError) and isinstance(info.value, CheckpointError), msg
  assert "\n" not in msg, msg
  for p in parts:
    assert p in msg, (p, msg)
  return msg


def test_embeddings_of_the_wrong_count_or_width(files):
  e48, x4 = files["coco_48_base_cls_emb.pth"], files["coco_65_cls_emb_rn50x4.pth"]
  # the base-class file where the 65-class test vocabulary is read
  _one_line(
      lambda: builders.read_embeddings(e48, 65, 64),
      CheckpointError,
      e48,
      "[65, 64]",
      "[48, 64]",
      "48 rows = the COCO OVD base classes",
  )
  # RN50x4 embeddings for an RN50 model
  _one_line(
      lambda: builders.read_embeddings(x4, 65, 1024),
      CheckpointError,
      x4,
      "[65, 1024]",
      "[65, 640]",
      "640-d = RN50x4 text embeddings, the model's are 1024-d (RN50)",
  )
  # a checkpoint given as embeddings
  _one_line(lambda: builders.read_embeddings(files["rpn_coco_48.pth"], 65, 64), CheckpointError)


def test_an_fpn_rpn_where_a_c4_one_is_configured(files, tmp_path):
  fpn = files["rpn_lvis_866.pth"]
  parts = ("expected a C4 RPN", "rpn.checkpoint_arch", "found an FPN RPN")
  _one_line(lambda: export.load_rpn(fpn, "c4"), CheckpointError, fpn, *parts)
  converted = str(tmp_path / "rpn_lvis_866")
  export.export_detectron2_rpn(fpn, converted)
  _one_line(lambda: export.load_rpn(converted, "c4"), CheckpointError, converted, *parts)
  rpn, gen, variables = export.load_rpn(fpn, "fpn")  # the right one loads, file or export
  assert rpn.arch == "fpn" and len(gen.strides) == 5 and variables["params"]


def test_a_detector_or_a_clip_given_as_an_rpn(files, tmp_path):
  det = files["detector.pth"]
  _one_line(
      lambda: export.load_rpn(det),
      CheckpointError,
      det,
      "expected an offline RPN",
      "found a fine-tuned RegionCLIP detector",
  )
  pre = files["pretrained.pth"]
  _one_line(lambda: export.load_rpn(pre), CheckpointError, pre, "found a pretrained RegionCLIP")
  exported = str(tmp_path / "det")
  export.export_regionclip_detector(det, exported)
  _one_line(
      lambda: export.load_rpn(exported),
      CheckpointError,
      exported,
      "expected an RPN export, found a detector export",
  )
  # a pretrained checkpoint that stores its offline RPN is one (the official visualisation's)
  assert export.load_rpn(files["pretrained_with_rpn.pth"], "c4")[0].arch == "c4"


def test_a_pretrained_file_or_an_rpn_given_as_a_detector(files, tmp_path):
  out = str(tmp_path / "out")
  for name, found in (
      ("pretrained.pth", "a pretrained RegionCLIP"),
      ("rpn_coco_48.pth", "an offline RPN"),
  ):
    _one_line(
        lambda: export.export_regionclip_detector(files[name], out),
        CheckpointError,
        files[name],
        "expected a fine-tuned RegionCLIP detector",
        f"found {found}",
    )
    assert not os.path.exists(out)
  # where a detector export is read: the official file itself is named with its conversion
  det = files["detector.pth"]
  _one_line(
      lambda: export.read_meta(det, "detector"),
      CheckpointError,
      "expected a detector export directory",
      f"tools.convert --input={det} --output=DIR",
  )


def test_an_rpn_or_a_detector_given_as_a_clip(files):
  rpn, det = files["rpn_coco_48.pth"], files["detector.pth"]
  _one_line(
      lambda: builders.load_clip_params(rpn),
      CheckpointError,
      rpn,
      "expected a CLIP checkpoint, found a detectron2 RPN",
  )
  _one_line(
      lambda: builders.load_clip_params(det),
      CheckpointError,
      det,
      "expected a CLIP checkpoint, found a fine-tuned RegionCLIP detector",
      "tools.convert",
  )
  emb = files["coco_65_cls_emb.pth"]
  _one_line(lambda: builders.load_clip_params(emb), CheckpointError, emb, "a bare tensor")


def test_class_names_the_dataset_lacks(files):
  cfg = finetune_config.get_config("custom")
  cfg.data.update(
      train_annotations=files["coco_train"],
      train_images=files["train_images"],
      test_annotations=files["coco"],
      test_images=files["images"],
      base_classes="person,unicorn",
  )
  with pytest.raises(DataError) as info:
    data_for(cfg, train=True)
  assert "unicorn" in str(info.value) and files["coco_train"] in str(info.value)
  assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- command lines


def _command(module: str, *args: str) -> tuple[int, list[str]]:
  argv = [sys.executable, "-m", module, *args]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  return out.returncode, out.stderr.strip().splitlines()


def _fails_in_one_line(module: str, args, *parts) -> str:
  code, lines = _command(module, *args)
  assert code != 0 and len(lines) == 1, (code, lines)
  for p in parts:
    assert p in lines[0], (p, lines[0])
  return lines[0]


def _zero_shot_args(files, out, **flags):
  base = {
      "checkpoint": files["pretrained.pth"],
      "annotations": files["coco"],
      "images": files["images"],
      "output": out,
      "test_size": "128",
      "max_size": "160",
      **flags,
  }
  return [f"--{k}={v}" for k, v in base.items()]


def test_each_command_line_fails_in_one_line(files, tmp_path):
  zs = "regionclip_jax.tools.zero_shot"
  # the base embeddings where the preset's 65 classes are read
  out = str(tmp_path / "zs")
  args = _zero_shot_args(files, out, preset="official_coco_gt")
  args.append(f"--embeddings={files['coco_48_base_cls_emb.pth']}")
  _fails_in_one_line(zs, args, files["coco_48_base_cls_emb.pth"], "[65, 64]", "[48, 64]")
  assert not os.path.exists(os.path.join(out, "detections.json"))
  # a pretrained checkpoint given to the detector preset
  args = _zero_shot_args(files, str(tmp_path / "det"), preset="official_coco_detector")
  args.append(f"--rpn={files['rpn_coco_48.pth']}")
  _fails_in_one_line(zs, args, files["pretrained.pth"], "expected a detector export")
  assert not os.path.exists(tmp_path / "det")
  # a class name that is not a category of the json
  args = _zero_shot_args(files, str(tmp_path / "names"), vocabulary="person,unicorn")
  _fails_in_one_line(zs, args, "unicorn", files["coco"])
  # a checkpoint given as detections
  _fails_in_one_line(
      "regionclip_jax.tools.evaluate",
      [f"--annotations={files['coco']}", f"--detections={files['rpn_coco_48.pth']}"],
      files["rpn_coco_48.pth"],
  )
  # an embeddings tensor given as a checkpoint
  out = str(tmp_path / "converted")
  _fails_in_one_line(
      "regionclip_jax.tools.convert",
      [f"--input={files['coco_65_cls_emb.pth']}", f"--output={out}"],
      "a bare tensor",
  )
  assert not os.path.exists(out)
  # an RPN given as the CLIP whose text tower embeds the concepts
  concepts = tmp_path / "concepts.txt"
  concepts.write_text("cat\n")
  _fails_in_one_line(
      "regionclip_jax.tools.extract_concept_features",
      [f"--checkpoint={files['rpn_coco_48.pth']}", f"--concepts={concepts}", f"--output={out}"],
      "expected a CLIP checkpoint, found a detectron2 RPN",
  )
  # a detector given as the RPN of the region features
  _fails_in_one_line(
      "regionclip_jax.tools.extract_region_features",
      [
          f"--checkpoint={files['pretrained.pth']}",
          f"--rpn={files['detector.pth']}",
          f"--images={files['images']}",
          f"--output={out}",
      ],
      files["detector.pth"],
      "found a fine-tuned RegionCLIP detector",
  )
  assert not os.path.exists(out)
  # the transfer preset given an FPN RPN where its configuration names a C4 one
  wd = str(tmp_path / "transfer")
  keys = {
      "model.init_checkpoint": files["pretrained.pth"],
      "rpn.checkpoint": files["rpn_lvis_866.pth"],
      "data.train_annotations": files["coco_train"],
      "data.train_images": files["train_images"],
      "data.test_annotations": files["coco"],
      "data.test_images": files["images"],
      "data.num_workers": 0,
  }
  _fails_in_one_line(
      "regionclip_jax.main",
      ["--config=configs/finetune.py:coco_transfer", f"--workdir={wd}"]
      + [f"--config.{k}={v}" for k, v in keys.items()],
      files["rpn_lvis_866.pth"],
      "expected a C4 RPN",
  )
  assert not os.listdir(wd)
