"""tools.extract_region_features on real photos (scikit-image) with a tiny random CLIP: each region
source (RPN, COCO ground truth, a boxes json), the detection mode, embeddings equal to the zero-shot
detector's for the same boxes, and bad records (property test) skipped or refused by name."""

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from configs import extract_region_features as erf_config
from regionclip_jax.data.validation import DataError
from regionclip_jax.detection import builders, export
from regionclip_jax.tools import extract_region_features as erf
from regionclip_jax.tools.zero_shot import ZeroShotDetector

SIZES = dict(test_size=64, max_size=96)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """A tiny CLIP dir, a random RPN export and a folder of three photos."""
  from test_detection_zero_shot import _tiny_clip_dir

  skd = pytest.importorskip("skimage.data")
  root = tmp_path_factory.mktemp("erf")
  ckpt, cfg = _tiny_clip_dir(root)
  rpn, _ = builders.build_rpn(cfg, anchor_sizes=(16, 32, 64))
  meta = {"kind": "rpn", "clip_config": cfg.to_dict(), "anchor_sizes": [16, 32, 64]}
  meta.update(aspect_ratios=[0.5, 1.0, 2.0], stride=16)
  export.export_model(str(root / "rpn" / "export"), builders.init_rpn(rpn, 64), meta)
  images = root / "images"
  images.mkdir()
  photos = {
      "astronaut.jpg": skd.astronaut(),
      "chelsea.png": skd.chelsea(),
      "coffee.jpg": skd.coffee(),
  }
  for name, img in photos.items():
    Image.fromarray(img[::4, ::4]).save(images / name)
  emb = np.random.default_rng(0).normal(size=(3, cfg.embed_dim)).astype(np.float32)
  np.save(root / "emb.npy", emb)
  return {"root": root, "ckpt": ckpt, "rpn": str(root / "rpn"), "images": images, "emb": emb}


@pytest.fixture(scope="module")
def detector(env):
  return ZeroShotDetector(env["ckpt"], score_thresh=0.0, topk=20, **SIZES)


def _config(env, out, **kw):
  c = erf_config.get_config()
  e = c.extract
  e.checkpoint, e.images, e.output = env["ckpt"], str(env["images"]), str(out)
  for k, v in dict(SIZES, **kw).items():
    e[k] = v
  return c


def _image(env, name):
  return np.asarray(Image.open(env["images"] / name).convert("RGB"))


def _zero_shot_feats(detector, img, boxes):
  """The zero-shot detector's region embeddings [R, D] of `boxes` (original px)."""
  x, _, (sy, sx) = detector.preprocess(img)
  b = np.asarray(boxes, np.float32) * np.asarray([sx, sy, sx, sy], np.float32)
  return np.asarray(detector.predictor.region_outputs(x, b[None])[0][0])


def test_rpn_regions_of_a_folder(env, detector, tmp_path, capsys):
  (env["images"] / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  (env["images"] / "notes.txt").write_text("not an image")
  try:
    out = erf.run(_config(env, tmp_path / "out", rpn=env["rpn"], num_regions=50))
  finally:
    os.remove(env["images"] / "broken.jpg")
    os.remove(env["images"] / "notes.txt")
  err = capsys.readouterr().err
  assert "broken.jpg: corrupt_image" in err
  assert (out["written"], out["skipped"], out["issues"], out["ignored_files"]) == (
      3,
      1,
      {"corrupt_image": 1},
      1,
  )
  assert sorted(os.listdir(tmp_path / "out")) == ["astronaut.npz", "chelsea.npz", "coffee.npz"]
  z = np.load(tmp_path / "out" / "chelsea.npz")
  h, w = z["image_size"]
  assert (h, w) == (75, 113) and 0 < len(z["boxes"]) <= 50
  assert z["feats"].shape == (len(z["boxes"]), 64) and z["scores"].shape == (len(z["boxes"]),)
  b = z["boxes"]
  assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
  assert (b >= 0).all() and (b[:, [0, 2]] <= w).all() and (b[:, [1, 3]] <= h).all()
  assert np.all(np.diff(z["scores"]) <= 0)  # RPN order: objectness, best first
  # the boxes went back to original pixels: the zero-shot path on them gives the same features
  np.testing.assert_allclose(
      z["feats"], _zero_shot_feats(detector, _image(env, "chelsea.png"), b), rtol=1e-3, atol=1e-4
  )


def test_gt_regions_of_a_coco_json(env, detector, tmp_path):
  gt = {
      "images": [
          {"id": 7, "file_name": "astronaut.jpg", "height": 128, "width": 128},
          {"id": 9, "file_name": "coffee.jpg", "height": 100, "width": 150},
      ],
      "annotations": [
          {"id": 70, "image_id": 7, "category_id": 1, "bbox": [10, 12, 40, 60]},
          {"id": 71, "image_id": 7, "category_id": 3, "bbox": [60.5, 20, 50, 30.25]},
      ],
      "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "rocket"}],
  }
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  out = erf.run(_config(env, tmp_path / "out", regions="gt", annotations=str(tmp_path / "gt.json")))
  assert (out["written"], out["skipped"]) == (2, 0)
  z = np.load(tmp_path / "out" / "astronaut.npz")
  boxes = np.asarray([[10, 12, 50, 72], [60.5, 20, 110.5, 50.25]], np.float32)
  np.testing.assert_array_equal(z["boxes"], boxes)
  np.testing.assert_array_equal(z["ann_ids"], [70, 71])
  np.testing.assert_array_equal(z["category_ids"], [1, 3])
  # one implementation: exactly the zero-shot detector's region embeddings of the same boxes
  np.testing.assert_allclose(
      z["feats"], _zero_shot_feats(detector, _image(env, "astronaut.jpg"), boxes), atol=1e-5
  )
  empty = np.load(tmp_path / "out" / "coffee.npz")  # an image without annotations: no regions
  assert empty["boxes"].shape == (0, 4) and empty["feats"].shape == (0, 64)


def test_boxes_json_with_embeddings_keeps_the_zero_shot_detections(env, detector, tmp_path):
  boxes = {"astronaut.jpg": [[10, 12, 50, 72], [60, 20, 110, 50], [0, 0, 128, 128]]}
  (tmp_path / "boxes.json").write_text(json.dumps(boxes))
  kw = dict(regions="file", boxes=str(tmp_path / "boxes.json"))
  feat_out = erf.run(_config(env, tmp_path / "feats", **kw))
  det_out = erf.run(
      _config(
          env, tmp_path / "dets", embeddings=str(env["root"] / "emb.npy"), score_thresh=0.0, **kw
      )
  )
  assert feat_out["written"] == det_out["written"] == 1
  f = np.load(tmp_path / "feats" / "astronaut.npz")
  d = np.load(tmp_path / "dets" / "astronaut.npz")
  np.testing.assert_array_equal(f["boxes"], np.asarray(boxes["astronaut.jpg"], np.float32))
  assert d["probs"].shape == (len(d["boxes"]), 4)  # 3 classes + background, last
  np.testing.assert_allclose(d["probs"].sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(
      d["scores"], d["probs"][np.arange(len(d["boxes"])), d["classes"]], rtol=1e-5
  )
  # each detection's features are its box's, and the detections are the zero-shot detector's
  rows = [int(np.nonzero((f["boxes"] == b).all(1))[0][0]) for b in d["boxes"]]
  np.testing.assert_allclose(d["feats"], f["feats"][rows], atol=1e-5)
  img = _image(env, "astronaut.jpg")
  zs = detector.detect(img, env["emb"], boxes=np.asarray(boxes["astronaut.jpg"], np.float32))
  assert len(zs["scores"]) == len(d["scores"]) == 9  # 3 boxes x 3 classes, none suppressed
  np.testing.assert_allclose(np.sort(zs["scores"]), np.sort(d["scores"]), rtol=1e-4)


def test_strict_command_line_stops_with_one_line(env, tmp_path):
  (tmp_path / "boxes.json").write_text(
      '[{"file_name": "astronaut.jpg", "boxes": [[1, 2, 30, 40]]},'
      ' {"file_name": "chelsea.png", "boxes": [[NaN, 0, 5, 5]]}]'
  )
  cmd = [sys.executable, "-m", "regionclip_jax.tools.extract_region_features"]
  cmd += [f"--checkpoint={env['ckpt']}", f"--images={env['images']}", "--regions=file"]
  cmd += [f"--boxes={tmp_path / 'boxes.json'}", f"--output={tmp_path / 'out'}"]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=os.getcwd())
  assert p.returncode == 1 and "Traceback" not in p.stderr
  assert p.stderr.strip().count("\n") == 0, p.stderr
  assert "record 1 (chelsea.png): non_finite_box" in p.stderr
  assert not (tmp_path / "out").exists()  # refused before any image ran


def test_json_records_refused_by_name(tmp_path, capsys):
  """Duplicate keys of the mapping form, COCO duplicate ids and bad annotations; no model."""
  (tmp_path / "b.json").write_text('{"a.jpg": [[0, 0, 1, 1]], "b.png": [], "a.jpg": []}')
  issues = erf.Issues("skip")
  recs = erf.boxes_records(str(tmp_path / "b.json"), str(tmp_path), issues)
  assert [r.stem for r in recs] == ["a", "b"] and issues.counter.counts == {"duplicate_image": 1}
  assert "b.json: 'a.jpg': duplicate_image" in capsys.readouterr().err
  strict = erf.Issues("strict")  # --max_images: later entries are neither read nor refused
  assert len(erf.boxes_records(str(tmp_path / "b.json"), str(tmp_path), strict, limit=2)) == 2
  coco = {
      "images": [
          {"id": 1, "file_name": "x/a.jpg"},
          {"id": 1, "file_name": "c.jpg"},
          {"id": 2, "file_name": "y/a.png"},
          {"id": 3, "file_name": "d.jpg"},
          {"file_name": "e.jpg"},
      ],
      "annotations": [
          {"id": 5, "image_id": 3, "category_id": 1, "bbox": [0, 0, -2, 4]},
          {"id": 6, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 4]},
      ],
  }
  (tmp_path / "gt.json").write_text(json.dumps(coco))
  issues = erf.Issues("skip")
  recs = erf.coco_records(str(tmp_path / "gt.json"), str(tmp_path), True, issues)
  assert [r.stem for r in recs] == ["a"] and recs[0].extra["ann_ids"].tolist() == [6]
  assert issues.counter.counts == {
      "duplicate_image": 1,
      "duplicate_output_name": 1,
      "negative_size_box": 1,
      "bad_record": 1,
  }
  assert "image 3 (d.jpg): negative_size_box: annotation 5 bbox" in capsys.readouterr().err
  with pytest.raises(DataError, match=r"image 1 \(c.jpg\): duplicate_image"):
    erf.coco_records(str(tmp_path / "gt.json"), str(tmp_path), True, erf.Issues("strict"))
  (tmp_path / "bad.json").write_text("[1, 2")
  with pytest.raises(DataError, match="bad.json: unreadable json"):
    erf.boxes_records(str(tmp_path / "bad.json"), str(tmp_path), erf.Issues("skip"))


# ----------------------------------------------------------------------------- property test

_BAD_BOX = {
    "nan": ([float("nan"), 0, 5, 5], "non_finite_box"),
    "inf": ([0, 0, float("inf"), 5], "non_finite_box"),
    "overflow": ([0, 0, "1e400", 5], "non_finite_box"),  # json reads it as inf
    "negative": ([20, 10, 5, 30], "negative_size_box"),
    "huge": ([0, 0, 1e30, 5], "box_outside_image"),
    "string": ([0, 0, "5", 5], "bad_boxes"),
    "short": ([0, 0, 5], "bad_boxes"),
}
_BAD_FILE = {
    "empty": (b"", "corrupt_image"),
    "truncated": (None, "corrupt_image"),
    "text": (b"hello, not an image", "corrupt_image"),
    "thin": ("thin", "degenerate_image"),  # 1 x 200 px: resizes to 0 x 96
}
# refused while reading the json, before any image (the rest when the image is opened)
_READ_KINDS = {"non_finite_box", "negative_size_box", "bad_boxes", "duplicate_image"}
KINDS = ["good"] * 3 + list(_BAD_BOX) + list(_BAD_FILE) + ["missing", "dup_id", "dup_name"]


@pytest.fixture(scope="module")
def extractor(detector):
  return erf.RegionFeatureExtractor(detector)


def _write_case(d, kinds, good_boxes):
  """A folder + boxes json (list form, ids) with one record per kind -> (json path, expected)."""
  skd = pytest.importorskip("skimage.data")
  photo = skd.astronaut()[::8, ::8]  # 64 x 64
  jpeg = io.BytesIO()
  Image.fromarray(photo).save(jpeg, "JPEG")
  records, expected = [], []
  for i, kind in enumerate(kinds):
    name, boxes, want = f"im{i}.jpg", good_boxes[i % len(good_boxes)], None
    if kind in _BAD_FILE:
      data, want = _BAD_FILE[kind]
      if data == "thin":
        Image.fromarray(photo[:1].repeat(4, 1)[:, :200]).save(d / name)
      else:
        (d / name).write_bytes(jpeg.getvalue()[:300] if data is None else data)
    elif kind != "missing":
      Image.fromarray(photo).save(d / name)
    if kind in _BAD_BOX:
      boxes, want = boxes + [_BAD_BOX[kind][0]], _BAD_BOX[kind][1]
    want = {"missing": "missing_image"}.get(kind, want)
    ident = i
    if kind == "dup_id" and records:
      ident, want = records[0]["id"], "duplicate_image"
    if kind == "dup_name" and records:
      name, want = records[0]["file_name"], "duplicate_image"
    records.append({"id": ident, "file_name": name, "boxes": boxes})
    expected.append(want)
  text = json.dumps(records).replace('"1e400"', "1e400")
  (d / "boxes.json").write_text(text)
  return str(d / "boxes.json"), expected


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6),
    good_boxes=st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 30), st.integers(0, 30), st.integers(0, 33), st.integers(0, 33)
            ),
            max_size=3,
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_bad_records_are_named_counted_and_the_rest_written(extractor, capsys, kinds, good_boxes):
  good_boxes = [[[x, y, x + w, y + h] for x, y, w, h in bs] for bs in good_boxes]
  with tempfile.TemporaryDirectory() as tmp:
    d = os.path.realpath(tmp)
    path, expected = _write_case(Path(d), kinds, good_boxes)
    bad = [(i, k) for i, k in enumerate(expected) if k]
    # strict: the first bad record stops the run, one line naming it
    issues = erf.Issues("strict")
    try:
      erf.extract_records(extractor, erf.boxes_records(path, d, issues), d + "/strict", issues)
      assert not bad
    except DataError as e:
      assert bad and "\n" not in str(e)
      i, k = min(bad, key=lambda b: (b[1] not in _READ_KINDS, b[0]))
      assert f"record {i} (" in str(e) and k in str(e), (str(e), bad)
    capsys.readouterr()
    # skip: every bad record warned about by name and counted; every good one written
    issues = erf.Issues("skip")
    done = erf.extract_records(extractor, erf.boxes_records(path, d, issues), d + "/out", issues)
    err = capsys.readouterr().err
    for i, k in bad:
      assert f"record {i} (" in err and k in err
    counts: dict = {}
    for _, k in bad:
      counts[k] = counts.get(k, 0) + 1
    assert issues.counter.counts == counts
    assert done["written"] == len(expected) - len(bad)
    written = sorted(os.listdir(d + "/out"))
    assert written == sorted(f"im{i}.npz" for i, k in enumerate(expected) if not k)
    for i, k in enumerate(expected):
      if not k:
        z = np.load(f"{d}/out/im{i}.npz")
        assert z["feats"].shape == (len(z["boxes"]), 64) and np.isfinite(z["feats"]).all()
