"""Transforms and box sanitising: geometry checked against rendered pixels, property-based."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from regionclip_jax.data import transforms as T
from regionclip_jax.data.validation import DataError, IssueCounter, sanitize_boxes, sanitize_captions


def _rect_record(h, w, box):
  """Black image with one white rectangle whose pixel extent is exactly `box` (ints)."""
  img = np.zeros((h, w, 3), np.uint8)
  x1, y1, x2, y2 = box
  img[y1:y2, x1:x2] = 255
  return {
      "image": img,
      "boxes": np.array([box], np.float32),
      "labels": np.array([3], np.int32),
      "image_id": 1,
  }


def _bright_extent(img):
  ys, xs = np.nonzero(img[..., 0] > 127)
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_shortest_edge_size_matches_detectron2_rule():
  assert T.shortest_edge_size(480, 640, 800, 1333) == (800, 1067)
  assert T.shortest_edge_size(640, 480, 800, 1333) == (1067, 800)
  assert T.shortest_edge_size(100, 1000, 800, 1333) == (133, 1333)
  assert T.shortest_edge_size(800, 800, 640, 1333) == (640, 640)


boxes_st = st.tuples(st.integers(20, 90), st.integers(20, 90)).flatmap(
    lambda hw: st.tuples(
        st.just(hw),
        st.integers(0, hw[1] - 8),
        st.integers(0, hw[0] - 8),
        st.integers(4, 8),
        st.integers(4, 8),
    )
)


@settings(max_examples=30, deadline=None)
@given(
    boxes_st,
    st.sampled_from([(64,), (50, 120)]),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["pil", "cv2"]),
)
def test_resize_and_flip_move_boxes_with_pixels(spec, sizes, seed, backend):
  (h, w), x1, y1, bw, bh = spec
  rec = _rect_record(h, w, (x1, y1, x1 + bw, y1 + bh))
  rng = np.random.default_rng(seed)
  out = T.apply_transforms(
      rec,
      [
          T.ResizeShortestEdge(sizes, 200, interpolation="nearest", backend=backend),
          T.RandomFlip(0.5),
      ],
      rng,
  )
  nh, nw = out["image"].shape[:2]
  assert np.all(out["boxes"] >= -1e-4) and np.all(out["boxes"][:, [0, 2]] <= nw + 1e-3)
  assert np.all(out["boxes"][:, [1, 3]] <= nh + 1e-3)
  np.testing.assert_allclose(out["boxes"][0], _bright_extent(out["image"]), atol=1.01)
  assert out["labels"][0] == 3


@settings(max_examples=25, deadline=None)
@given(boxes_st, st.integers(0, 2**31 - 1))
def test_large_scale_jitter_crops_boxes_consistently(spec, seed):
  (h, w), x1, y1, bw, bh = spec
  rec = _rect_record(h, w, (x1, y1, x1 + bw, y1 + bh))
  out = T.apply_transforms(
      rec, [T.LargeScaleJitter(48, 0.5, 2.0, "nearest")], np.random.default_rng(seed)
  )
  ch, cw = out["image"].shape[:2]
  assert ch <= 48 and cw <= 48
  visible = np.any(out["image"][..., 0] > 127)
  if len(out["boxes"]):
    b = out["boxes"][0]
    assert 0 <= b[0] < b[2] <= cw and 0 <= b[1] < b[3] <= ch
    if visible:
      np.testing.assert_allclose(b, _bright_extent(out["image"]), atol=1.51)
  else:
    assert not visible or _bright_extent(out["image"])[2:].min() <= 2  # only a sliver left
  assert len(out["labels"]) == len(out["boxes"])


def test_flip_twice_is_identity():
  rec = _rect_record(30, 50, (3, 4, 20, 9))
  back = T.hflip(T.hflip(rec))
  assert np.array_equal(back["image"], rec["image"]) and np.allclose(back["boxes"], rec["boxes"])
  once = T.hflip(rec)
  np.testing.assert_allclose(once["boxes"][0], _bright_extent(once["image"]))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 9))
def test_normalize_and_pad_roundtrip(h, w, k):
  rng = np.random.default_rng(h * 100 + w)
  img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  boxes = np.sort(rng.uniform(0, 40, (k, 4)).astype(np.float32).reshape(k, 2, 2), axis=1).reshape(
      k, 4
  )
  rec = {"image": img, "boxes": boxes, "labels": np.arange(k, dtype=np.int32), "image_id": 0}
  out = T.apply_transforms(
      rec, [T.NormalizeAndPad(40), T.PadBoxes(6, policy="skip", counter=IssueCounter())]
  )
  assert out["image"].shape == (40, 40, 3) and out["image"].dtype == np.float32
  assert out["image_mask"].sum() == h * w and out["image_mask"][:h, :w].all()
  assert tuple(out["image_size"]) == (h, w)
  restored = out["image"][:h, :w] * np.array(T.CLIP_STD) * 255 + np.array(T.CLIP_MEAN) * 255
  np.testing.assert_allclose(restored, img, atol=1e-3)
  assert np.all(out["image"][h:] == 0) and np.all(out["image"][:, w:] == 0)
  n = min(k, 6)
  assert out["box_mask"].sum() == n and np.array_equal(out["boxes"][:n], boxes[:n])
  assert np.all(out["labels"][n:] == -1) and np.array_equal(out["labels"][:n], np.arange(n))


def test_pad_boxes_policy_and_pad_size_error():
  rec = {
      "image": np.zeros((5, 5, 3), np.uint8),
      "boxes": np.ones((4, 4), np.float32) * [0, 0, 1, 1],
      "labels": np.zeros(4, np.int32),
      "image_id": 12,
  }
  with pytest.raises(DataError, match="image_id 12.*4 boxes > max_boxes 3"):
    T.PadBoxes(3).map(rec)
  c = IssueCounter()
  T.PadBoxes(3, policy="skip", counter=c).map(rec)
  assert c.counts == {"boxes_over_max": 1}
  with pytest.raises(ValueError, match="larger than pad size 4x4"):
    T.NormalizeAndPad(4).map(rec)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(*[st.floats(-50, 150) | st.sampled_from([np.nan, np.inf])] * 4), max_size=8),
    st.integers(1, 100),
    st.integers(1, 100),
)
def test_sanitize_boxes_property(raw, h, w):
  boxes = np.array(raw, np.float32).reshape(-1, 4)
  labels = np.arange(len(boxes), dtype=np.int32)
  c = IssueCounter()
  out, lab = sanitize_boxes(boxes, labels, h, w, policy="skip", counter=c, where="f.json image 1")
  assert len(out) == len(lab) <= len(boxes)
  assert np.all(out[:, 2] > out[:, 0]) and np.all(out[:, 3] > out[:, 1])
  assert np.all(out[:, [0, 2]] >= 0) and np.all(out[:, [0, 2]] <= w)
  assert np.all(out[:, [1, 3]] >= 0) and np.all(out[:, [1, 3]] <= h)
  dropped = len(boxes) - len(out)
  counts = c.counts
  assert dropped == counts.get("non_finite_box", 0) + counts.get("empty_box", 0) + counts.get(
      "box_wholly_outside_image", 0
  )
  # Kept boxes are unchanged unless counted as clipped.
  good = [
      i
      for i, b in enumerate(boxes)
      if np.all(np.isfinite(b))
      and b[0] >= 0
      and b[1] >= 0
      and b[2] <= w
      and b[3] <= h
      and b[2] > b[0]
      and b[3] > b[1]
  ]
  assert set(good) <= set(lab.tolist())
  assert len(lab) - len(good) == counts.get("box_outside_image", 0)
  if c.total():
    with pytest.raises(DataError, match="f.json image 1 box"):
      sanitize_boxes(boxes, labels, h, w, policy="strict", counter=None, where="f.json image 1")
  else:
    sanitize_boxes(boxes, labels, h, w, policy="strict", counter=None, where="f.json image 1")


def test_sanitize_captions_and_report():
  c = IssueCounter("coco")
  assert sanitize_captions(
      ["  a dog. ", "", None, " "], policy="skip", counter=c, where="cap.json image 3"
  ) == ["a dog."]
  assert c.counts == {"empty_caption": 3}
  assert "coco: empty_caption: 3 (e.g. cap.json image 3 caption 1" in c.report()
  with pytest.raises(DataError, match="cap.json image 3 caption 1: empty_caption"):
    sanitize_captions(["x", ""], policy="strict", counter=None, where="cap.json image 3")


def test_caption_selection_and_tokenisation_are_separate():
  tok = lambda texts, context_length=77: np.array(
      [[7, len(t)] + [0] * (context_length - 2) for t in texts]
  )
  rec = {"captions": ["ab", "abcd"], "image_id": 0}
  seen = {
      T.apply_transforms(
          rec, [T.SelectCaption(), T.TokenizeCaption(tok)], np.random.default_rng(s)
      )["caption_tokens"][1]
      for s in range(20)
  }
  assert seen == {2, 4}
  out = T.apply_transforms(rec, [T.SelectCaption(random=False), T.TokenizeCaption(tok)])
  assert out["caption_tokens"].shape == (77,) and out["caption_tokens"].dtype == np.int32
  with pytest.raises(KeyError, match="lacks"):
    T.KeepKeys(["image"]).map(rec)


def test_real_photo_recipe_shapes():
  skimage = pytest.importorskip("skimage")
  img = skimage.data.astronaut()  # 512x512 RGB
  rec = {
      "image": img,
      "boxes": np.array([[100, 50, 300, 400]], np.float32),
      "labels": np.array([0], np.int32),
      "image_id": 5,
  }
  out = T.apply_transforms(
      rec,
      T.detection_transforms(train=True, short_edge_lengths=(96, 128), max_size=160, max_boxes=4),
  )
  assert out["image"].shape == (160, 160, 3) and out["boxes"].shape == (4, 4)
  h, w = out["image_size"]
  assert h in (96, 128) and h == w
  assert sorted(out) == sorted(T.DETECTION_KEYS)


def test_uint8_output_normalised_on_device_matches_host():
  jnp = pytest.importorskip("jax.numpy")
  rng = np.random.default_rng(3)
  recs = [
      {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)} for h, w in [(20, 31), (32, 7)]
  ]
  host = [T.NormalizeAndPad(32).map(r) for r in recs]
  raw = [T.NormalizeAndPad(32, normalize=False).map(r) for r in recs]
  assert raw[0]["image"].dtype == np.uint8
  dev = T.normalize_on_device(
      jnp.asarray(np.stack([r["image"] for r in raw])),
      jnp.asarray(np.stack([r["image_mask"] for r in raw])),
  )
  np.testing.assert_allclose(np.asarray(dev), np.stack([h["image"] for h in host]), atol=1e-5)


def test_pil_and_cv2_bicubic_agree_on_smooth_images():
  """Both backends upscale a smooth photo to nearly the same pixels (mean abs diff < 1 level)."""
  skimage = pytest.importorskip("skimage")
  pytest.importorskip("cv2")
  img = skimage.data.coffee()[::4, ::4]
  a = T.resize_image(img, 200, 300, "bicubic", "pil").astype(np.float32)
  b = T.resize_image(img, 200, 300, "bicubic", "cv2").astype(np.float32)
  assert np.abs(a - b).mean() < 1.0
