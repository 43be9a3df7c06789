"""tools.zero_shot over folders with corrupted files among real photos (scikit-image), and over a
COCO json with bad records: skip warns with one line per bad file and detects the rest, strict
stops with one line naming the file; detections.json is whole and holds every good image."""

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from configs import zero_shot as zcfg
from regionclip_jax.data.validation import DataError
from regionclip_jax.detection.zero_shot import ZeroShotDetector
from regionclip_jax.tools import zero_shot
from tiny_models import save_tiny_clip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"test_size": 64, "max_size": 96}


def _png_header(width: int, height: int) -> bytes:
  """A PNG that declares width x height and holds no pixels (a cheap "huge image")."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data))
    return struct.pack(">I", len(data)) + kind + data + crc

  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _encode(img: np.ndarray, fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, fmt)
  return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  skd = pytest.importorskip("skimage.data")
  d = tmp_path_factory.mktemp("zs_bad")
  save_tiny_clip(str(d / "clip"))
  det = ZeroShotDetector(str(d / "clip"), score_thresh=0.0, topk=3, **SIZES)
  photo = _encode(skd.chelsea()[::4, ::4], "JPEG")
  # kind -> (file bytes or None for a folder, the kind it is skipped as or None for a good image)
  kinds = {
      "photo": (photo, None),
      "photo_png": (_encode(skd.astronaut()[::8, ::8], "PNG"), None),  # PNG bytes, any name
      "one_pixel": (_encode(np.full((1, 1, 3), 200, np.uint8), "PNG"), None),
      "empty": (b"", "unreadable_image"),
      "truncated": (photo[: len(photo) // 2], "unreadable_image"),
      "text": (b"not an image at all\n", "unreadable_image"),
      "huge": (_png_header(100_000, 100_000), "image_too_large"),
      "thin": (_encode(np.zeros((1, 2000, 3), np.uint8), "PNG"), "image_too_small"),
      "folder": (None, "missing_image"),
  }
  return d, det, kinds


def _config(images, output, **over):
  c = zcfg.get_config("folder")
  z = c.zero_shot
  z.checkpoint, z.images, z.output, z.vocabulary = "unused", str(images), str(output), "cat,rocket"
  z.update(SIZES, score_thresh=0.0, topk=3, **over)
  return c


def _make_folder(root, files, kinds):
  root.mkdir()
  for name, kind in files:
    data = kinds[kind][0]
    if data is None:
      (root / name).mkdir()
    else:
      (root / name).write_bytes(data)


def _run(det, c):
  """run() in-process with the module's detector (no checkpoint load, programs compiled once)."""
  with mock.patch.object(zero_shot, "ZeroShotDetector", lambda *a, **k: det):
    return zero_shot.run(c, c.zero_shot.output)


# the `world` fixture's file kinds: the first three are good images
FILE_KINDS = (
    "photo",
    "photo_png",
    "one_pixel",
    "empty",
    "truncated",
    "text",
    "huge",
    "thin",
    "folder",
)
NAMES = st.tuples(
    st.sampled_from(["a", "A", "b", "photo 1"]), st.sampled_from([".jpg", ".png", ".JPEG"])
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(NAMES, st.sampled_from(FILE_KINDS)),
        min_size=1,
        max_size=5,
        unique_by=lambda e: "".join(e[0]),
    )
)
def test_skip_detects_the_good_images_and_names_every_bad_one(
    world, tmp_path_factory, capsys, entries
):
  d, det, kinds = world
  root = tmp_path_factory.mktemp("case")
  files = sorted(("".join(n), k) for n, k in entries)
  _make_folder(root / "images", files, kinds)
  out = _run(det, _config(root / "images", root / "out"))
  err = capsys.readouterr().err
  bad = {f: kinds[k][1] for f, k in files if kinds[k][1]}
  good = [f for f, k in files if not kinds[k][1]]
  want = {}
  for kind in bad.values():
    want[kind] = want.get(kind, 0) + 1
  assert out["num_images"] == len(files) and out["num_skipped"] == len(bad)
  assert out["skipped"] == want
  warnings = [ln for ln in err.splitlines() if "warning: skipped" in ln]
  assert len(warnings) == len(bad) and "Traceback" not in err
  for f, kind in bad.items():
    assert any(f"{root / 'images' / f}: {kind}" in w for w in warnings), (f, warnings)
  dets = json.load(open(root / "out" / "detections.json"))
  assert {x["file_name"] for x in dets} == set(good)  # score_thresh 0: every good image has some
  assert sorted(os.listdir(root / "out")) == sorted(
      ["detections.json"] + [zero_shot.figure_names([f for f, _ in files])[f] for f in good]
  )  # one figure per good image, no leftover temporary file


def test_strict_names_the_file_and_writes_no_detections(world, tmp_path):
  d, det, kinds = world
  _make_folder(tmp_path / "images", [("a.jpg", "photo"), ("b.jpg", "truncated")], kinds)
  with pytest.raises(DataError) as e:
    _run(det, _config(tmp_path / "images", tmp_path / "out", on_error="strict"))
  msg = str(e.value)
  assert "\n" not in msg and f"{tmp_path / 'images' / 'b.jpg'}: unreadable_image" in msg
  assert "--on_error=skip" in msg and not (tmp_path / "out" / "detections.json").exists()


def test_figures_of_files_sharing_a_name_do_not_overwrite_each_other():
  names = zero_shot.figure_names(["a.jpg", "a.png", "A.jpeg", "b.jpg", "a.jpg.png"])
  assert names["b.jpg"] == "b.png" and len({n.lower() for n in names.values()}) == 5
  assert names["a.jpg"] == "a.jpg.png" and names["a.png"] == "a.png.png"


def _gt(images, annotations):
  cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "rocket"}]
  return {"images": images, "annotations": annotations, "categories": cats}


GOOD_ANN = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 40, 30]}


def _ann(**edit):
  return lambda g: g["annotations"].append(dict(GOOD_ANN, id=9, **edit))


def _image(file, image_id=2, box=True):
  def add(g):
    g["images"].append({"id": image_id, "file_name": file})
    if box:
      _ann(image_id=image_id)(g)

  return add


# edit of the json -> how the record is named, and its kind
BAD_GT = {
    "unknown_image": (_ann(image_id=7), "annotation 1 (id 9, image 7): unknown_image"),
    "unknown_category": (_ann(category_id=5), "annotation 1 (id 9, image 1): unknown_category"),
    "nan_box": (_ann(bbox=[1, 1, float("nan"), 3]), "annotation 1 (id 9, image 1): non_finite_box"),
    "empty_box": (_ann(bbox=[1, 1, 0, 3]), "annotation 1 (id 9, image 1): empty_box"),
    "huge_int_box": (_ann(bbox=[1, 1, 10**400, 3]), "annotation 1 (id 9, image 1): non_finite_box"),
    "short_box": (_ann(bbox=[1, 1, 3]), "annotation 1 (id 9, image 1): bad_box"),
    "outside": (_ann(bbox=[100, 5, 50, 10]), "annotation 1 (id 9, image 1): box_outside_image"),
    "missing_file": (_image("gone.jpg"), "image 2 (gone.jpg): missing_image"),
    "unreadable": (_image("text.jpg"), "image 2 (text.jpg): unreadable_image"),
    "duplicate_id": (_image("a.jpg", 1, False), "image 1 (a.jpg): duplicate_image_id"),
}


GOOD_IMAGE = {"id": 1, "file_name": "a.jpg", "height": 75, "width": 113}


def _gt_folder(root, kinds):
  _make_folder(root / "images", [("a.jpg", "photo"), ("text.jpg", "text")], kinds)
  return root / "images"


@pytest.fixture(scope="module")
def clean_metrics(world, tmp_path_factory):
  """The metrics of the json without a bad record."""
  d, det, kinds = world
  root = tmp_path_factory.mktemp("clean")
  images = _gt_folder(root, kinds)
  (root / "gt.json").write_text(json.dumps(_gt([GOOD_IMAGE], [GOOD_ANN])))
  return _run(det, _config(images, root / "wd", annotations=str(root / "gt.json"), vocabulary=""))


@pytest.mark.parametrize("case", sorted(BAD_GT))
def test_annotations_refuse_a_bad_record_naming_it_and_skip_drops_it(
    world, clean_metrics, tmp_path, case
):
  d, det, kinds = world
  images = _gt_folder(tmp_path, kinds)
  gt = _gt([dict(GOOD_IMAGE)], [dict(GOOD_ANN)])
  BAD_GT[case][0](gt)
  path = tmp_path / "gt.json"
  path.write_text(json.dumps(gt))
  c = _config(images, tmp_path / "wd", annotations=str(path), vocabulary="")
  with pytest.raises(DataError) as e:
    _run(det, c)
  assert f"{path} {BAD_GT[case][1]}" in str(e.value) and "\n" not in str(e.value)
  c.zero_shot.on_error = "skip"
  m = _run(det, c)
  assert len(m["data_issues"]) == 1 and BAD_GT[case][1].split(": ")[-1] in m["data_issues"][0]
  assert clean_metrics["num_detections"] > 0
  for k in ("AP", "AP50", "num_detections"):  # as if the bad record were not in the json
    assert m[k] == pytest.approx(clean_metrics[k], nan_ok=True), k


def test_annotation_structure_errors_are_one_line(world, tmp_path):
  d, det, _ = world
  for text, match in [
      ("{oops", "not readable json"),
      ('{"images": []}', "needs lists"),
      (
          '{"images": [{"file_name": "a.jpg"}], "annotations": [], "categories": []}',
          r"image 0 needs fields \['id'\]",
      ),
      (
          '{"images": [], "annotations": [], "categories": [{"id": [1], "name": "cat"}]}',
          r"category 0: \['id'\] must be integers",
      ),
      ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "has no file_name"),
  ]:
    path = tmp_path / "gt.json"
    path.write_text(text)
    c = _config(tmp_path, tmp_path / "wd", annotations=str(path), vocabulary="")
    with pytest.raises(DataError, match=match):
      _run(det, c)


def test_command_line_skip_summary_and_strict_one_line(world, tmp_path):
  d, _, kinds = world
  _make_folder(
      tmp_path / "images", [("a.jpg", "photo"), ("b.jpg", "empty"), ("c.png", "huge")], kinds
  )
  args = [
      sys.executable,
      "-m",
      "regionclip_jax.tools.zero_shot",
      f"--checkpoint={d / 'clip'}",
      f"--images={tmp_path / 'images'}",
      "--vocabulary=cat,rocket",
      "--test_size=64",
      "--max_size=96",
      "--score_thresh=0",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda *a: subprocess.run(  # noqa: E731
      args + list(a), cwd=REPO, capture_output=True, text=True, timeout=300, env=env
  )
  out = run(f"--output={tmp_path / 'out'}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "detections on 1 of 3 images" in out.stdout
  assert "(skipped 2: image_too_large 1, unreadable_image 1)" in out.stdout
  assert out.stderr.count("warning: skipped") == 2 and "Traceback" not in out.stderr
  assert json.load(open(tmp_path / "out" / "detections.json"))[0]["file_name"] == "a.jpg"
  out = run(f"--output={tmp_path / 'strict'}", "--on_error=strict")
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 1 and len(lines) == 1 and "Traceback" not in out.stderr
  assert f"{tmp_path / 'images' / 'b.jpg'}: unreadable_image" in lines[0]
