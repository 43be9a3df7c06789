"""Classes given by example boxes (detection/exemplars.py) on real photos (scikit-image).

No trained RegionCLIP is available offline, so the towers are random (tiny_rn). What is measured
holds for them too: the same pixels give near-identical region features, so a box around the cat
in `chelsea` must find that cat in a shifted, rescaled crop of the photo, above exemplar classes
from other photos (astronaut face, coffee cup, rocket), another region of chelsea (its blurred
background) and text classes. That checks the exemplar path: the boxes' scaling into the
detector's resized frame, the normalisation, the merge with a text vocabulary.

Random towers map every region close to one direction (cosine about 0.98 between regions of
unrelated photos), so the test checkpoint's attnpool output bias is set to minus the mean region
feature of the four photos' sliding windows: cosines then spread over [-1, 1], as a trained
model's do, and a box in the wrong place would show.
"""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from regionclip_jax.detection.exemplars import (
    ExemplarError,
    class_embedding,
    read_exemplars,
    region_embeddings,
    vocabulary_with_exemplars,
)
from regionclip_jax.detection.zero_shot import ZeroShotDetector, sliding_window_boxes
from regionclip_jax.models.checkpoints import save_converted
from tiny_models import tiny_clip_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"test_size": 128, "max_size": 208}
# x0 y0 x1 y1 in each photo's pixels
BOXES = {
    "my cat": ("chelsea", [130, 60, 350, 290]),  # the cat's face
    "chelsea background": ("chelsea", [395, 0, 451, 300]),  # the blurred wall at the right
    "astronaut face": ("astronaut", [150, 15, 305, 190]),
    "coffee cup": ("coffee", [170, 20, 410, 290]),
    "rocket": ("rocket", [295, 120, 345, 410]),
}
TEXT = ["dog", "person"]
# the query: chelsea from (60, 30) on, scaled by 0.75
OFFSET, SCALE = (60, 30), 0.75


def _in_crop(box):
  ox, oy = OFFSET
  return (np.asarray(box, np.float64) - [ox, oy, ox, oy]) * SCALE


def _iou(boxes, box):
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  w = np.clip(np.minimum(b[:, 2], box[2]) - np.maximum(b[:, 0], box[0]), 0, None)
  h = np.clip(np.minimum(b[:, 3], box[3]) - np.maximum(b[:, 1], box[1]), 0, None)
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
  return w * h / (area(b) + area(np.asarray(box)) - w * h)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  skd = pytest.importorskip("skimage.data")
  d = tmp_path_factory.mktemp("exemplars")
  photos = {n: getattr(skd, n)() for n in ("chelsea", "astronaut", "coffee", "rocket")}
  for n, img in photos.items():
    Image.fromarray(img).save(d / f"{n}.png")
  cfg, params = tiny_clip_params()
  save_converted(str(d / "raw"), cfg, params, source="test")
  raw = ZeroShotDetector(str(d / "raw"), **SIZES)
  feats = []
  for img in photos.values():
    x, size, _ = raw.preprocess(img)
    windows = sliding_window_boxes(int(size[0, 0]), int(size[0, 1]))
    feats.append(np.asarray(raw.predictor.region_outputs(x, windows[None])[0][0]))
  bias = params["visual"]["attnpool"]["c_proj"]["bias"]
  params["visual"]["attnpool"]["c_proj"]["bias"] = bias - np.concatenate(feats).mean(0)
  save_converted(str(d / "clip"), cfg, params, source="test")

  spec = {
      "classes": [
          {"name": n, "images": [{"file": f"{f}.png", "boxes": [b]}]} for n, (f, b) in BOXES.items()
      ]
  }
  (d / "exemplars.json").write_text(json.dumps(spec))
  ox, oy = OFFSET
  crop = Image.fromarray(photos["chelsea"][oy:, ox:])
  crop = crop.resize((round(crop.width * SCALE), round(crop.height * SCALE)), Image.BILINEAR)
  (d / "query").mkdir()
  crop.save(d / "query" / "crop.png")
  return d, np.asarray(crop)


def test_cat_box_finds_the_cat_in_a_shifted_rescaled_crop(world):
  d, crop = world
  det = ZeroShotDetector(str(d / "clip"), score_thresh=0.0, topk=1000, **SIZES)
  names, emb = vocabulary_with_exemplars(det, TEXT, read_exemplars(str(d / "exemplars.json")))
  assert names == TEXT + list(BOXES) and emb.shape == (len(names), 64)
  np.testing.assert_allclose(np.linalg.norm(emb[len(TEXT) :], axis=1), 1.0, rtol=1e-5)
  queries = {n: _in_crop(BOXES[n][1]) for n in ("my cat", "chelsea background")}
  boxes = np.stack(list(queries.values()))
  cos = region_embeddings(det, crop, boxes) @ (emb / np.linalg.norm(emb, axis=1)[:, None]).T
  # the detector's own scores of the two boxes for every class (softmax over K + background)
  out = det.detect(crop, emb, boxes=boxes, names=names)
  scores = np.zeros((len(boxes), len(names)))
  for b, s, c in zip(out["boxes"], out["scores"], out["classes"]):
    scores[int(np.argmax(_iou(boxes, b))), int(c)] = s
  for i, q in enumerate(queries):  # shown with pytest -s
    print(f"\n{q} box in the crop, cosine / score per class:")
    for k, n in enumerate(names):
      print(f"  {n:20s} {cos[i, k]:+.4f}  {scores[i, k]:.4f}")
  for i, q in enumerate(queries):
    want = names.index(q)
    assert np.argmax(cos[i]) == want and np.argmax(scores[i]) == want, (q, cos[i], scores[i])
    others = [k for k, n in enumerate(names) if BOXES.get(n, ("",))[0] != "chelsea"]
    # chelsea's two regions are near each other (one photo's colours); the rest is far
    assert cos[i, want] > 0.99 and cos[i, want] - np.delete(cos[i], want).max() > 0.005
    assert cos[i, want] - cos[i, others].max() > 0.3


def test_text_weight_and_a_class_named_like_a_word(world):
  d, crop = world
  det = ZeroShotDetector(str(d / "clip"), **SIZES)
  spec = {
      "classes": [
          {
              "name": "person",  # a vocabulary word: its text row is mixed in and replaced
              "text_weight": 0.25,
              "images": [{"file": "chelsea.png", "boxes": [BOXES["my cat"][1]]}],
          },
          {"name": "mug", "images": [{"file": "coffee.png", "boxes": [BOXES["coffee cup"][1]]}]},
      ]
  }
  path = d / "mixed.json"
  path.write_text(json.dumps(spec))
  classes = read_exemplars(str(path))
  names, emb = vocabulary_with_exemplars(det, TEXT, classes)
  assert names == ["dog", "person", "mug"]
  text = det.text_embeddings(TEXT)
  np.testing.assert_allclose(emb[0], text[0], rtol=1e-6)
  chelsea = np.asarray(Image.open(d / "chelsea.png").convert("RGB"))
  ex = region_embeddings(det, chelsea, np.asarray([BOXES["my cat"][1]]))[0]
  mix = 0.75 * ex + 0.25 * text[1] / np.linalg.norm(text[1])
  np.testing.assert_allclose(emb[1], mix / np.linalg.norm(mix), atol=1e-5)
  # without text the embedding is the normalised mean of the boxes' unit embeddings
  two = classes[1].images[0].boxes
  pair = dataclasses.replace(
      classes[1],
      images=(dataclasses.replace(classes[1].images[0], boxes=np.concatenate([two, two * 0.5])),),
  )
  coffee = np.asarray(Image.open(d / "coffee.png").convert("RGB"))
  unit = region_embeddings(det, coffee, pair.images[0].boxes).mean(0)
  np.testing.assert_allclose(class_embedding(det, pair), unit / np.linalg.norm(unit), atol=1e-5)


def _write(d, spec, name="bad.json"):
  path = d / name
  path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
  return str(path)


def _cls(name="thing", boxes=((10, 10, 60, 60),), file="chelsea.png", **extra):
  return {"name": name, "images": [{"file": file, "boxes": [list(b) for b in boxes]}], **extra}


BAD = [
    ({"classes": [_cls()], "colour": 1}, r"bad.json: unknown key\(s\) \['colour'\]"),
    ({"classes": [_cls(colour=1)]}, r"class 0 \('thing'\): unknown key\(s\) \['colour'\]"),
    ({"classes": [{"name": "thing", "images": []}]}, r"class 0 \('thing'\): empty class"),
    ({"classes": []}, r"'classes' must be a non-empty list"),
    ({"classes": [_cls(file="gone.png")]}, r"class 0 \('thing'\) image 0 \(gone.png\): no file"),
    ({"classes": [_cls(file="text.png")]}, r"image 0 \(text.png\): unreadable image"),
    ({"classes": [_cls(boxes=())]}, r"image 0 \(chelsea.png\): 'boxes' must be a non-empty"),
    ({"classes": [_cls(boxes=[(0, 0, 500, 10)])]}, r"box 0: box .* outside the image \(451x300\)"),
    ({"classes": [_cls(boxes=[(5, 5, 5, 9)])]}, r"box 0: zero-area box"),
    (
        '{"classes": [{"name": "thing", "images": [{"file": "chelsea.png", '
        '"boxes": [[0, 0, NaN, 9]]}]}]}',
        r"box 0: non-finite box",
    ),
    ({"classes": [_cls(boxes=[(1, 2, 3)])]}, r"box 0: expected 4 numbers"),
    ({"classes": [_cls(boxes=[(0, 0, 10**400, 9)])]}, r"box 0: non-finite box"),
    ({"classes": [_cls(text_weight=2)]}, r"'text_weight' must be a number in \[0, 1\]"),
    ({"classes": [_cls(), _cls(name="b"), _cls(name="b")]}, r"class 2 \('b'\): a class of this"),
    ("{not json", r"bad.json: not readable json"),
]


@pytest.mark.parametrize("spec,match", BAD)
def test_bad_exemplar_records_name_json_class_and_record(world, spec, match):
  d, _ = world
  (d / "text.png").write_text("not an image")
  with pytest.raises(ExemplarError, match=match):
    read_exemplars(_write(d, spec))


def _tool(*args):
  return subprocess.run(
      [sys.executable, "-m", "regionclip_jax.tools.zero_shot", *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


def test_tool_finds_the_cat_and_refuses_a_bad_file_in_one_line(world, tmp_path):
  d, crop = world
  common = [f"--checkpoint={d / 'clip'}", f"--images={d / 'query'}", "--test_size=128"]
  out = _tool(
      *common,
      "--max_size=208",
      f"--exemplars={d / 'exemplars.json'}",
      "--vocabulary=dog,person",
      "--score_thresh=0",
      "--topk=1000",
      f"--output={tmp_path / 'out'}",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  dets = json.load(open(tmp_path / "out" / "detections.json"))
  assert {x["category_name"] for x in dets} <= set(TEXT) | set(BOXES)
  assert (tmp_path / "out" / "crop.png").is_file()
  cat = _in_crop(BOXES["my cat"][1])
  xyxy = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (e["bbox"] for e in dets)])
  # sliding windows: the best-scored detection that covers the cat (IoU >= 0.5) is the cat class
  over = [e for e, v in zip(dets, _iou(xyxy, cat)) if v >= 0.5]
  top = max(over, key=lambda e: e["score"])
  best = max(dets, key=lambda e: e["score"])
  print(f"\ntool: {len(dets)} detections; top {best}; {len(over)} at the cat, top there {top}")
  assert top["category_name"] == "my cat"
  # the best-scored detection of all is the cat class too, on a window centred on the cat
  x, y, w, h = best["bbox"]
  assert best["category_name"] == "my cat"
  assert cat[0] <= x + w / 2 <= cat[2] and cat[1] <= y + h / 2 <= cat[3]
  assert "detections on 1 of 1 images" in out.stdout

  bad = _write(d, {"classes": [_cls(boxes=[(0, 0, 500, 10)])]})
  out = _tool(*common, f"--exemplars={bad}", f"--output={tmp_path / 'bad'}")
  assert out.returncode == 1 and "Traceback" not in out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "bad.json: class 0 ('thing') image 0 (chelsea.png) box 0" in lines[0]
  assert not (tmp_path / "bad").exists()
