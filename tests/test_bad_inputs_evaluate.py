"""tools.evaluate over corrupted detections (and ground truth): strict stops with one line naming
the file and the record, skip scores the good records and counts the bad ones by kind."""

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from regionclip_jax.data.validation import DataError
from regionclip_jax.evaluation.coco_eval import evaluate_coco
from regionclip_jax.tools.evaluate import format_table, run
from test_eval_coco import make_dets, make_gt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GT = make_gt(0, num_images=3)
GOOD = make_dets(GT, 10)
NAN, INF = float("nan"), float("inf")

# corruption -> (edit of one detection, the kind it is counted as)
BAD = {
    "nan_box": (lambda d: d.update(bbox=[NAN, 1, 2, 3]), "non_finite_box"),
    "inf_box": (lambda d: d.update(bbox=[1, 1, INF, 3]), "non_finite_box"),
    "overflow_box": (lambda d: d.update(bbox=[0, 0, 1e200, 1e200]), "non_finite_box"),
    "int_overflow_box": (lambda d: d.update(bbox=[0, 0, 10**400, 3]), "non_finite_box"),
    "huge_box": (lambda d: d.update(bbox=[0, 0, 1e9, 5]), "huge_box"),
    "negative_box": (lambda d: d.update(bbox=[5, 5, -3, 4]), "negative_size_box"),
    "short_box": (lambda d: d.update(bbox=[1, 2, 3]), "wrong_type"),
    "string_box": (lambda d: d.update(bbox="1,2,3,4"), "wrong_type"),
    "bool_in_box": (lambda d: d.update(bbox=[True, 0, 3, 3]), "wrong_type"),
    "nan_score": (lambda d: d.update(score=NAN), "non_finite_score"),
    "string_score": (lambda d: d.update(score="0.9"), "wrong_type"),
    "null_score": (lambda d: d.update(score=None), "wrong_type"),
    "no_score": (lambda d: d.pop("score"), "missing_field"),
    "no_category": (lambda d: d.pop("category_id"), "missing_field"),
    "unknown_image": (lambda d: d.update(image_id=10**12), "unknown_image"),
    "unknown_category": (lambda d: d.update(category_id=4242), "unknown_category"),
    "unknown_name": (lambda d: d.update(category_name="zebra"), "unknown_category"),
    "fractional_image_id": (lambda d: d.update(image_id=1.5), "wrong_type"),
    "string_image_id": (lambda d: d.update(image_id="one"), "wrong_type"),
    "list_category": (lambda d: d.update(category_id=[1]), "wrong_type"),
}
NOT_OBJECTS = [None, 3, "det", [1, 2]]


def _write(path, obj):
  path.write_text(json.dumps(obj, allow_nan=True))  # NaN / Infinity as json's extensions write them
  return str(path)


@pytest.fixture(scope="module")
def gt_file(tmp_path_factory):
  return _write(tmp_path_factory.mktemp("gt") / "gt.json", GT)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.integers(0, len(GOOD) - 1),
        st.sampled_from(sorted(BAD)) | st.sampled_from(range(len(NOT_OBJECTS))),
        max_size=8,
    ),
    st.booleans(),
)
def test_bad_detections_strict_names_record_skip_scores_the_rest(
    tmp_path_factory, gt_file, corrupt, repeat_ids
):
  dets, kinds = [], {}
  for i, d in enumerate(GOOD):
    d = dict(d, id=7) if repeat_ids else dict(d)  # repeated detection ids are harmless
    if i in corrupt:
      what = corrupt[i]
      if isinstance(what, int):
        d, kinds[i] = NOT_OBJECTS[what], "not_an_object"
      else:
        BAD[what][0](d)
        kinds[i] = BAD[what][1]
    dets.append(d)
  d = tmp_path_factory.mktemp("dets")
  path = _write(d / "dets.json", dets)

  if kinds:
    with pytest.raises(DataError) as e:
      run(gt_file, path, "coco_ovd", on_error="strict")
    first = min(kinds)
    assert f"{path} detection {first}: {kinds[first]}" in str(e.value)
    assert "\n" not in str(e.value) and "--on_error=skip" in str(e.value)

  warned = []
  m = run(gt_file, path, "coco_ovd", str(d / "m.json"), on_error="skip", warn=warned.append)
  expected = {}
  for k in kinds.values():
    expected[k] = expected.get(k, 0) + 1
  assert m["detection_issues"] == expected and m["dropped_detections"] == len(kinds)
  assert m["detections_read"] == len(GOOD) and m["num_detections"] == len(GOOD) - len(kinds)
  assert len(warned) == min(len(kinds), 11) and all(path in w for w in warned[:10])
  assert json.loads((d / "m.json").read_text())["detection_issues"] == expected
  good = [x for i, x in enumerate(GOOD) if i not in kinds]
  direct = evaluate_coco(GT, good, split="coco_ovd")
  for k in ("AP", "AP50", "AP50_base", "AP50_all"):
    assert m[k] == pytest.approx(direct[k], nan_ok=True)
  table = format_table(m)
  assert all(f"| dropped: {k} | {n} |" in table for k, n in expected.items())


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (json.dumps(GOOD).encode()[:-40], "not valid json"),
        (b"\xff\xfe[]", "not valid json"),
        (b"[" * 100000, "not valid json"),
        (b"42", "expected a list of results, got int"),
        (b'{"results": []}', "needs a 'detections'"),
        (b'{"categories": [{"id": "x"}], "detections": []}', "categories entry 0"),
    ],
    ids=["empty", "truncated", "not_utf8", "deep", "number", "no_list", "bad_own_categories"],
)
def test_unreadable_detection_files_stop_in_both_modes(tmp_path, gt_file, content, message):
  (tmp_path / "dets.json").write_bytes(content)
  for mode in ("strict", "skip"):
    with pytest.raises(ValueError, match=message) as e:
      run(gt_file, str(tmp_path / "dets.json"), "coco", on_error=mode)
    assert "dets.json" in str(e.value) and "\n" not in str(e.value)


def _gt_edit(key, index, **fields):
  def edit(gt):
    gt[key][index] = dict(gt[key][index], **fields)

  return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_gt_edit("annotations", 2, bbox=[NAN, 0, 3, 3]), "annotation 2 (id 3) needs a 'bbox'"),
        (_gt_edit("annotations", 2, bbox=[0, 0, -3, 3]), "annotation 2 (id 3) needs a 'bbox'"),
        (_gt_edit("annotations", 2, id=1), "annotation 2 has id 1, as an earlier annotation"),
        (_gt_edit("images", 1, id=1), "image 1 has id 1, as an earlier image"),
        (_gt_edit("images", 1, id=None), "image 1 needs an integer 'id'"),
        (_gt_edit("annotations", 2, category_id=999), "annotation 2 (id 3) has category_id 999"),
        (_gt_edit("categories", 0, name=5), "category 0 needs a string 'name'"),
        (lambda gt: gt.update(images={}), "'images' must be a list of objects"),
    ],
    ids=["nan", "negative", "dup_ann", "dup_image", "null_image_id", "unknown_cat", "name", "type"],
)
def test_bad_ground_truth_stops_in_both_modes(tmp_path, edit, message):
  gt = json.loads(json.dumps(GT))
  edit(gt)
  path = _write(tmp_path / "gt.json", gt)
  dets = _write(tmp_path / "dets.json", GOOD)
  for mode in ("strict", "skip"):
    with pytest.raises(ValueError) as e:
      run(path, dets, "coco", on_error=mode)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_no_traceback_and_capped_warnings(tmp_path, gt_file):
  dets = [dict(d, bbox=[NAN, 0, 1, 1]) if i % 2 == 0 else d for i, d in enumerate(GOOD)]
  path = _write(tmp_path / "dets.json", dets)
  n_bad = len(range(0, len(GOOD), 2))
  assert n_bad > 10
  cmd = [sys.executable, "-m", "regionclip_jax.tools.evaluate", f"--annotations={gt_file}"]
  cmd += [f"--detections={path}", "--split=coco", f"--output={tmp_path / 'm.json'}"]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  strict = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
  assert strict.returncode == 2 and "Traceback" not in strict.stderr
  assert strict.stderr.strip().splitlines() == [
      f"evaluate: error: {path} detection 0: non_finite_box: bbox [nan, 0, 1, 1] (rerun with "
      "--on_error=skip to leave such records out and count them)"
  ]
  assert not (tmp_path / "m.json").exists()
  skip = subprocess.run(
      cmd + ["--on_error=skip"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
  )
  assert skip.returncode == 0 and "Traceback" not in skip.stderr, skip.stderr
  lines = skip.stderr.strip().splitlines()
  assert len(lines) == 11 and lines[-1].endswith(
      "further issues are counted, not listed; see the summary"
  )
  assert f"| dropped: non_finite_box | {n_bad} |" in skip.stdout
  m = json.loads((tmp_path / "m.json").read_text())
  assert m["detection_issues"] == {"non_finite_box": n_bad}
  assert m["num_detections"] == len(GOOD) - n_bad
