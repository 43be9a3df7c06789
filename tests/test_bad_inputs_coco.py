"""The detection jobs' COCO-json source (data/coco.py, data.on_error) over corrupted jsons: data
problems raise naming the record (strict) or are counted by kind with the good images' boxes
intact (skip); a field of the wrong type stops in both modes with one line naming the record."""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from regionclip_jax.data.coco import CocoDetection
from regionclip_jax.data.validation import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W, H, N = 40, 30, 5
BOXES = [[2, 2, 10, 8], [15, 10, 12, 9]]  # two per image, xywh, one cat and one dog
CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
NAN, INF = float("nan"), float("inf")


def _dataset():
  images = [{"id": 10 + i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in range(N)]
  anns = [
      {"id": 1 + 2 * i + j, "image_id": 10 + i, "category_id": 1 + j, "bbox": list(BOXES[j])}
      for i in range(N)
      for j in range(2)
  ]
  return {"images": images, "annotations": anns, "categories": CATS}


# edit of one annotation -> the kind it is counted as (None: not an issue), whether the box stays
BOX_EDITS = {
    "nan": ({"bbox": [NAN, 2, 10, 8]}, "non_finite_box", False),
    "inf": ({"bbox": [2, 2, INF, 8]}, "non_finite_box", False),
    "overflow": ({"bbox": [1e308, 2, 1e308, 8]}, "non_finite_box", False),
    "beyond_float32": ({"bbox": [0, 0, 1e39, 5]}, "non_finite_box", False),
    "huge": ({"bbox": [0, 0, 1e30, 1e30]}, "box_outside_image", True),  # clipped to the image
    "zero_area": ({"bbox": [3, 3, 0, 5]}, "empty_box", False),
    "negative": ({"bbox": [3, 3, -4, 5]}, "empty_box", False),
    "outside": ({"bbox": [35, 2, 10, 8]}, "box_outside_image", True),
    "wholly_outside": ({"bbox": [50, 2, 10, 8]}, "box_wholly_outside_image", False),
    "unknown_category": ({"category_id": 99}, "unknown_category", False),
    "repeated_annotation_id": ({"id": 1}, None, True),  # ids are not read
}
# (annotation or image, field, value) -> a structural error in both modes
WRONG_TYPES = [
    ("annotation", "bbox", "1,2,3,4"),
    ("annotation", "bbox", [1, None, 3, 4]),
    ("annotation", "bbox", [True, 1, 2, 3]),
    ("annotation", "bbox", [1, 2, 3]),
    ("annotation", "category_id", "cat"),
    ("annotation", "image_id", None),
    ("annotation", "image_id", 10.5),
    ("annotation", "bbox", "<missing>"),
    ("image", "height", None),
    ("image", "width", [W]),
    ("image", "id", True),
    ("image", "file_name", 7),
]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for i in range(N):
    Image.fromarray(rng.integers(0, 255, (H, W, 3), np.uint8)).save(d / f"{i}.jpg")
  return d


# sanitize_boxes reports an image's non-finite boxes first, then empty ones, then those outside
RANK = {"non_finite_box": 0, "empty_box": 1, "box_outside_image": 2, "box_wholly_outside_image": 2}


def _where_box(path, data, image_index, ann_index):
  """sanitize_boxes' name for an annotation: its index among its image's boxes kept so far."""
  image_id = 10 + image_index
  same = [
      i
      for i, a in enumerate(data["annotations"])
      if a["image_id"] == image_id and a["category_id"] in (1, 2)
  ]
  return f"{path} image {image_id} box {same.index(ann_index)}"


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(st.integers(0, 2 * N - 1), st.sampled_from(sorted(BOX_EDITS)), max_size=6),
    st.sets(st.integers(0, N - 1), max_size=2),
    st.sets(st.integers(0, N - 1), max_size=2),
    st.none() | st.tuples(st.sampled_from(range(len(WRONG_TYPES))), st.integers(0, N - 1)),
)
def test_bad_records_strict_names_record_skip_counts(
    tmp_path_factory, image_dir, edits, missing, duplicated, wrong
):
  data = _dataset()
  for k, name in edits.items():
    data["annotations"][k].update(copy.deepcopy(BOX_EDITS[name][0]))
  for i in missing:
    data["images"][i]["file_name"] = f"gone_{i}.jpg"
  for i in sorted(duplicated):  # a merged json: the same id again, another file
    data["images"].append(dict(data["images"][i], file_name="0.jpg"))
  if wrong is not None:
    what, field, value = WRONG_TYPES[wrong[0]]
    entry = data[f"{what}s"][wrong[1]]
    entry.pop(field) if value == "<missing>" else entry.update({field: value})
  path = tmp_path_factory.mktemp("j") / "train.json"
  path.write_text(json.dumps(data))

  if wrong is not None:
    for mode in ("strict", "skip"):
      with pytest.raises(ValueError) as e:
        CocoDetection(path, image_dir, policy=mode, check_files=True)
      assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError) as e:
      CocoDetection(path, image_dir, policy="skip", check_files=True)
    assert f"{path}: {what} {wrong[1]} " in str(e.value) and not isinstance(e.value, DataError)
    return

  counts, firsts = {}, []
  for i in sorted(missing):
    counts["missing_image"] = counts.get("missing_image", 0) + 1
    firsts.append(f"{path} image {i} (id {10 + i}, gone_{i}.jpg): missing_image")
  for j, i in enumerate(sorted(duplicated)):
    counts["duplicate_image_id"] = counts.get("duplicate_image_id", 0) + 1
    firsts.append(f"{path} image {N + j} (id {10 + i}, 0.jpg): duplicate_image_id")
  kept = {i: [0, 1] for i in range(N) if i not in missing}
  box_issues = []
  for k, name in sorted(edits.items()):
    _, kind, stays = BOX_EDITS[name]
    image = k // 2
    if kind == "unknown_category":  # counted while reading annotations, missing image or not
      counts[kind] = counts.get(kind, 0) + 1
      firsts.append(f"{path} annotation {k} (id {1 + k}, image {10 + image}): {kind}")
    elif kind is not None and image in kept:
      counts[kind] = counts.get(kind, 0) + 1
      box_issues.append((image, RANK[kind], k, f"{_where_box(path, data, image, k)}: {kind}"))
    if not stays and image in kept:
      kept[image].remove(k % 2)
  firsts += [w for *_, w in sorted(box_issues)]

  if firsts:
    with pytest.raises(DataError) as e:
      CocoDetection(path, image_dir, policy="strict", check_files=True)
    assert str(e.value).startswith(firsts[0]) and "\n" not in str(e.value)
  ds = CocoDetection(path, image_dir, policy="skip", check_files=True)
  assert ds.issues.counts == counts
  left = {i: js for i, js in kept.items() if js}
  assert [r["image_id"] for r in ds._records] == [10 + i for i in sorted(left)]
  for n, i in enumerate(sorted(left)):
    rec = ds[n]  # decodes: the good part is there, image and boxes
    assert rec["image"].shape == (H, W, 3) and rec["labels"].tolist() == left[i]
    for j, box in zip(left[i], rec["boxes"]):
      if 2 * i + j not in edits:
        x, y, w, h = BOXES[j]
        np.testing.assert_array_equal(box, [x, y, x + w, y + h])
      assert 0 <= box[0] < box[2] <= W and 0 <= box[1] < box[3] <= H


def test_wrong_type_through_main_is_one_line(tmp_path, image_dir):
  data = _dataset()
  data["annotations"][3]["bbox"] = ["2", 2, 10, 8]
  (tmp_path / "train.json").write_text(json.dumps(data))
  (tmp_path / "test.json").write_text(json.dumps(_dataset()))
  cmd = [sys.executable, "-m", "regionclip_jax.main", "--config=configs/finetune.py:custom"]
  cmd += [f"--workdir={tmp_path / 'wd'}", "--config.data.base_classes=cat,dog"]
  for split in ("train", "test"):
    cmd += [f"--config.data.{split}_annotations={tmp_path / f'{split}.json'}"]
    cmd += [f"--config.data.{split}_images={image_dir}"]
  for mode in ("strict", "skip"):
    out = subprocess.run(
        cmd + [f"--config.data.on_error={mode}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert (
        len(errors) == 1
        and "train.json: annotation 3 (id 4) bbox must be [x, y, w, h]" in errors[0]
    )
