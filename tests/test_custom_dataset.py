"""Your own COCO-format dataset (README, "Your own COCO-format dataset"): class lists, bad input
(strict: one line naming the file and the record; skip: counted and reported), proposal recall,
and `configs/finetune.py:custom` end to end on the tiny photo dataset of
`tools.make_example_dataset` (RPN, its proposal recall, detector, AP50 / AP novel / base / all)."""

import copy
import json
import math
import os
import subprocess
import sys

import pytest

from regionclip_jax.data.class_lists import resolve_class_list
from regionclip_jax.data.validation import DataError
from regionclip_jax.tools.make_example_dataset import make_example_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATS = [{"id": 1, "name": "person"}, {"id": 2, "name": "cat"}, {"id": 7, "name": "rocket"}]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
  """The example dataset at 64 px, without the CLIP (the data tests need none)."""
  d = tmp_path_factory.mktemp("example")
  make_example_dataset(str(d), size=64, clip=False)
  return d


def _config(root, train="train.json", test="test.json", **data):
  from configs import finetune

  c = finetune.get_config("custom")
  c.data.train_annotations = str(root / train)
  c.data.test_annotations = str(root / test)
  c.data.train_images = c.data.test_images = str(root / "images")
  c.data.base_classes = "person,cat,rocket"
  for k, v in data.items():
    c.data[k] = v
  return c


# ----------------------------------------------------------------------------- class lists


def test_class_list_all_names_and_file(tmp_path):
  assert resolve_class_list("all", CATS, "x.json", "data.base_classes") == [
      "person",
      "cat",
      "rocket",
  ]
  assert resolve_class_list(" rocket, cat ", CATS, "x.json", "k") == ["rocket", "cat"]
  f = tmp_path / "classes.txt"
  f.write_text("# my base classes\ncat\n\nperson\n")
  assert resolve_class_list(f"@{f}", CATS, "x.json", "k") == ["cat", "person"]
  # a built-in split name: its classes matched by name, in the split's order
  assert resolve_class_list("coco_ovd", CATS, "x.json", "k", "base")[:2] == ["person", "bicycle"]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("person,dog", r"data.base_classes: class 'dog' is not a category of /d/train.json"),
        ("cat,cat", "class 'cat' is listed twice"),
        ("", "data.base_classes is empty"),
        (" , ", "lists no class"),
        ("@/no/such/file.txt", "class list file not found: /no/such/file.txt"),
        ("lvis", "none of the split's"),
    ],
)
def test_class_list_errors_are_one_line(spec, match):
  # "lvis" on a json without frequency fields: the shipped LVIS v1 list, none of these names
  cats = [{"id": 1, "name": "zzz"}] if spec == "lvis" else CATS
  with pytest.raises((ValueError, FileNotFoundError), match=match) as e:
    resolve_class_list(spec, cats, "/d/train.json", "data.base_classes")
  assert "\n" not in str(e.value)


def test_split_novel_is_the_test_classes_not_trained_on(example):
  from regionclip_jax.detection.data import data_for

  src, _, names, base, novel = data_for(_config(example), train=True)
  assert names == base == ["person", "cat", "rocket"] and novel == []
  # the coffee photo has a cup box only: no base box, left out of training
  assert all("coffee" not in r["file"] for r in src._records) and len(src) == 9
  src, _, names, base, novel = data_for(_config(example), train=False)
  assert names == ["person", "cat", "rocket", "cup"] and novel == ["cup"] and len(src) == 5
  _, _, names, _, novel = data_for(_config(example, test_classes="cup,cat,person,rocket"), False)
  assert names == ["cup", "cat", "person", "rocket"] and novel == ["cup"]
  _, _, names, base, novel = data_for(_config(example, base_classes="all"), train=False)
  assert base == names and novel == []
  with pytest.raises(DataError, match=r"data.base_classes \['rocket'\] are not in the test vocab"):
    data_for(_config(example, test_classes="person,cat,cup"), train=False)


# ----------------------------------------------------------------------------- bad input


def _broken(example, tmp_path, edit, which="train.json"):
  """A copy of the example's `which` json with `edit(json)` applied, next to the same images."""
  data = json.load(open(example / which))
  edit(data)
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / "images").symlink_to(example / "images")
  for name in ("train.json", "test.json"):
    if name != which:
      (tmp_path / name).write_text((example / name).read_text())
  (tmp_path / which).write_text(json.dumps(data))
  return tmp_path


def _outside(d):
  im = d["images"][0]
  d["annotations"][0]["bbox"] = [im["width"] - 10, 2, 30, 20]


def _zero_area(d):
  d["annotations"][0]["bbox"] = [3, 3, 0, 10]


def _unknown_category(d):
  d["annotations"][1]["category_id"] = 99


def _missing_image(d):
  d["images"][2]["file_name"] = "not_there.jpg"


def _duplicate_id(d):
  # e.g. two jsons merged: a second image entry under an id already taken
  d["images"].append(dict(d["images"][3], id=d["images"][0]["id"]))


BAD = [
    (_outside, "box_outside_image", r"train.json image 1 box 0: box_outside_image"),
    (_zero_area, "empty_box", r"train.json image 1 box 0: empty_box"),
    (_unknown_category, "unknown_category", r"train.json annotation 1 \(id 2, image 1\)"),
    (_missing_image, "missing_image", r"train.json image 2 \(id 3, not_there.jpg\)"),
    (_duplicate_id, "duplicate_image_id", r"train.json image 10 \(id 1, train_03_chelsea.jpg\)"),
]


@pytest.mark.parametrize("edit, kind, where", BAD, ids=[b[1] for b in BAD])
def test_bad_records_strict_stops_skip_counts(example, tmp_path, edit, kind, where):
  from regionclip_jax.detection.data import data_for

  root = _broken(example, tmp_path, edit)
  with pytest.raises(DataError, match=where) as e:
    data_for(_config(root), train=True)
  assert kind in str(e.value) and "\n" not in str(e.value)
  src, *_ = data_for(_config(root, on_error="skip"), train=True)
  assert src.issues.counts == {kind: 1}
  assert f"{kind}: 1" in src.report() and "train.json" in src.report()


def test_unknown_base_class_and_empty_split_stop_in_both_modes(example, tmp_path):
  from regionclip_jax.detection.data import data_for

  for mode in ("strict", "skip"):
    with pytest.raises(DataError, match=r"class 'dog' is not a category of .*train.json"):
      data_for(_config(example, base_classes="person,dog", on_error=mode), train=True)
  # the classes are in the json, but only the cup has a box left -> nothing to train on
  keep_cups = lambda d: d.update(annotations=[a for a in d["annotations"] if a["category_id"] == 4])
  root = _broken(example, tmp_path / "a", keep_cups)
  with pytest.raises(DataError, match=r"train.json \(data.train_annotations\) has no image with"):
    data_for(_config(root), train=True)
  root = _broken(
      example, tmp_path / "b", lambda d: d.update(images=[], annotations=[]), "test.json"
  )
  with pytest.raises(DataError, match=r"test.json \(data.test_annotations\) has no image left"):
    data_for(_config(root), train=False)


def test_bad_input_through_main_is_one_line_no_traceback(example, tmp_path):
  root = _broken(example, tmp_path, _unknown_category)
  c = _config(root)
  cmd = [sys.executable, "-m", "regionclip_jax.main", "--config=configs/finetune.py:custom"]
  cmd += [f"--workdir={tmp_path / 'wd'}"]
  cmd += [f"--config.data.{k}={c.data[k]}" for k in ("train_annotations", "test_annotations")]
  cmd += [f"--config.data.train_images={c.data.train_images}"]
  cmd += [f"--config.data.test_images={c.data.test_images}", "--config.data.base_classes=cat"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  last = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
  assert len(last) == 1 and "train.json annotation 1 (id 2, image 1)" in last[0]
  assert "unknown_category" in last[0]


# ----------------------------------------------------------------------------- proposal recall


def test_proposal_recall_class_agnostic():
  from regionclip_jax.evaluation.proposal_recall import proposal_recall

  gt = {
      "images": [{"id": 1, "height": 100, "width": 100}],
      "annotations": [
          {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 40], "iscrowd": 0},
          {"id": 2, "image_id": 1, "category_id": 5, "bbox": [50, 50, 40, 40], "iscrowd": 0},
      ],
      "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}],
  }
  hit = {"image_id": 1, "bbox": [0, 0, 40, 40], "score": 0.9}
  r = proposal_recall(gt, [hit])
  assert r["num_gt"] == 2 and r["AR@100"] == pytest.approx(50.0)
  assert proposal_recall(gt, [hit], [3])["AR@1000"] == pytest.approx(100.0)
  assert proposal_recall(gt, [hit], [5])["AR@300"] == pytest.approx(0.0)
  # only the top 100 by score count for AR@100: the hit ranked 101st is found at 300 only
  junk = [{"image_id": 1, "bbox": [95, 0, 4, 4], "score": 1.0}] * 100
  r = proposal_recall(gt, junk + [dict(hit, score=0.1)], [3])
  assert r["AR@100"] == pytest.approx(0.0) and r["AR@300"] == pytest.approx(100.0)
  assert math.isnan(proposal_recall(gt, [hit], [])["AR@100"])
  assert proposal_recall(gt, [], [3])["AR@100"] == 0.0


# ----------------------------------------------------------------------------- end to end


def _finite(m, keys):
  return {k: m[k] for k in keys if not (isinstance(m[k], float) and math.isfinite(m[k]))}


def test_custom_finetune_end_to_end_readme_command(tmp_path):
  """The README's command on the example dataset (2 RPN + 2 detector steps, 160 px): metrics.json
  has AP50 / AP novel / base / all and AR@100 / 300 / 1000 base / novel, all finite."""
  paths = make_example_dataset(str(tmp_path / "ex"))
  wd = tmp_path / "wd"
  cmd = [sys.executable, "-m", "regionclip_jax.main", "--config=configs/finetune.py:custom"]
  cmd += [f"--workdir={wd}"] + [f"--config.{k}={v}" for k, v in paths.items()]
  cmd += [
      "--config.data.base_classes=person,cat,rocket",
      "--config.data.short_edge_lengths=(128,)",
      "--config.data.test_size=128",
      "--config.data.max_size=160",
      "--config.data.num_workers=0",
      "--config.train.num_steps=2",
      "--config.train.batch_size=2",
      "--config.rpn_stage.train.num_steps=2",
      "--config.rpn_stage.train.batch_size=2",
  ]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  m = json.load(open(wd / "metrics.json"))
  ap = [f"{a}_{p}" for a in ("AP50", "AP") for p in ("novel", "base", "all")]
  ar = [f"AR@{n}_{p}" for n in (100, 300, 1000) for p in ("base", "novel")]
  assert not _finite(m, ap + ar)
  assert m["num_categories_with_gt"] == {"base": 3, "novel": 1, "all": 4}
  assert (m["num_gt_base"], m["num_gt_novel"]) == (4, 2) and m["data_issues"] == []
  assert os.path.isfile(wd / "rpn" / "export" / "model.json")
  assert any((wd / "xla_cache").iterdir())  # JAX's persistent cache: a resumed job loads it
  assert "AR@100 / 300 / 1000 base" in out.stdout and "novel  AP50" in out.stdout

  # again on a test json with bad records, data.on_error="skip": the RPN and the detector are
  # found in the workdir (nothing trains), the bad records are counted and reported at the end
  test = json.load(open(paths["data.test_annotations"]))
  test["annotations"][0]["category_id"] = 99
  test["images"][1]["file_name"] = "gone.jpg"
  bad = tmp_path / "bad_test.json"
  bad.write_text(json.dumps(test))
  cmd = [a for a in cmd if not a.startswith("--config.data.test_annotations=")]
  cmd += [f"--config.data.test_annotations={bad}", "--config.data.on_error=skip"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  m = json.load(open(wd / "metrics.json"))
  assert not _finite(m, ap + ar) and m["num_images"] == 4
  issues = " ".join(m["data_issues"])
  assert "missing_image: 1" in issues and "unknown_category: 1" in issues
  assert "bad_test.json" in issues and "data records skipped or repaired" in out.stdout

  # the same dataset with no fine-tuning (configs/zero_shot.py:custom), the job's RPN
  from configs import zero_shot as zcfg
  from regionclip_jax.tools import zero_shot

  c = zcfg.get_config("custom")
  z = c.zero_shot
  z.annotations, z.images = paths["data.test_annotations"], paths["data.test_images"]
  z.checkpoint, z.rpn, z.base_classes = paths["model.init_checkpoint"], str(wd / "rpn"), "person"
  z.test_size, z.max_size = 128, 160
  zm = zero_shot.run(c, str(tmp_path / "zs"))
  assert not _finite(zm, ap) and zm["num_categories_with_gt"] == {"base": 1, "novel": 3, "all": 4}
  z.base_classes = "person,dog"
  with pytest.raises(DataError, match=r"zero_shot.base_classes: class 'dog' is not a category"):
    zero_shot.run(copy.deepcopy(c), str(tmp_path / "zs2"))
  z.base_classes, z.images = "person", str(tmp_path)
  with pytest.raises(DataError, match=r"test.json image 101 \(test_00_astronaut.jpg\): missing"):
    zero_shot.run(c, str(tmp_path / "zs3"))
