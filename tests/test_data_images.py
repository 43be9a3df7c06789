"""Image reading at accelerator rates: reduced-size JPEG decoding, cv2 resizes against PIL on real
photos, uint8 batches normalised on the device, grain worker processes (order, resume, issues)."""

import functools
import io
import json

import numpy as np
import pytest
from PIL import Image

from regionclip_jax.data import transforms as T
from regionclip_jax.data.coco import CocoDetection
from regionclip_jax.data.images import decode_image, decode_image_and_size, draft_scale
from regionclip_jax.data.pipeline import make_pipeline

skimage_data = pytest.importorskip("skimage.data")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@functools.lru_cache(maxsize=None)
def _photo_jpeg(name: str, w: int, h: int) -> bytes:
  """A scikit-image photo resized to w x h and saved as JPEG quality 90 (COCO-like)."""
  img = Image.fromarray(getattr(skimage_data, name)()).resize((w, h), Image.BICUBIC)
  buf = io.BytesIO()
  img.save(buf, "JPEG", quality=90)
  return buf.getvalue()


def _decode(data: bytes, draft_for=None) -> np.ndarray:
  return decode_image(data, policy="strict", counter=None, where="test", draft_for=draft_for)


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  assert a.shape == b.shape
  return np.abs(a.astype(np.int16) - b.astype(np.int16))


def test_draft_leaves_images_below_twice_the_target_untouched():
  for w, h in [(640, 480), (1600, 1200)]:  # 1600x1200 -> 1067x800 is a shrink by 1.5 only
    data = _photo_jpeg("coffee", w, h)
    assert draft_scale(h, w, (800, 1333)) == 1
    np.testing.assert_array_equal(_decode(data, (800, 1333)), _decode(data))


# backend, interpolation -> max, mean vs full decode + PIL resize (data/images.py docstring)
DRAFT_TOLERANCES = {
    ("pil", "bicubic"): (14, 0.33),
    ("pil", "bilinear"): (14, 0.34),
    ("cv2", "bicubic"): (19, 0.36),
    ("cv2", "bilinear"): (23, 0.33),
}


@pytest.mark.parametrize("backend, interpolation", sorted(DRAFT_TOLERANCES))
def test_draft_decode_then_resize_matches_full_decode(backend, interpolation):
  """2400x1800 decodes at 1200x900 (>= the 1067x800 target) and resizes to within the stated
  figures of the official full decode + PIL resize (over the four photos)."""
  diffs = []
  resize = T.ResizeShortestEdge(800, 1333, interpolation=interpolation, backend=backend)
  for name in PHOTOS:
    data = _photo_jpeg(name, 2400, 1800)
    small, full = decode_image_and_size(
        data, policy="strict", counter=None, where="test", draft_for=(800, 1333)
    )
    assert small.shape == (900, 1200, 3) and full == (1800, 2400)
    record = {"image": small, "orig_size": np.array(full, np.int32)}
    got = resize.random_map(record, np.random.default_rng(0))["image"]
    want = T.resize_image(_decode(data), 800, 1067, interpolation)
    diffs.append(_diff(got, want))
  d = np.concatenate([x.ravel() for x in diffs])
  max_diff, mean_diff = DRAFT_TOLERANCES[backend, interpolation]
  assert d.max() <= max_diff and d.mean() <= mean_diff + 0.005, (d.max(), d.mean())


# (input w, h), output (w, h), interpolation, max, mean: the table in transforms.resize_image.
CV2_TOLERANCES = [
    ((640, 480), (1067, 800), "bicubic", 13, 0.36),
    ((640, 480), (853, 640), "bicubic", 15, 0.38),
    ((1200, 900), (1067, 800), "bicubic", 11, 0.26),
    ((1600, 1200), (1067, 800), "bicubic", 12, 0.29),
    ((1600, 1200), (853, 640), "bicubic", 13, 0.31),
    ((2400, 1800), (1067, 800), "bicubic", 10, 0.23),
    ((640, 480), (1067, 800), "bilinear", 1, 0.15),
    ((640, 480), (853, 640), "bilinear", 1, 0.19),
    ((1200, 900), (1067, 800), "bilinear", 12, 0.26),
    ((1600, 1200), (1067, 800), "bilinear", 18, 0.31),
    ((1600, 1200), (853, 640), "bilinear", 20, 0.30),
    ((2400, 1800), (1067, 800), "bilinear", 12, 0.23),
]


@pytest.mark.parametrize("size, out, interpolation, max_diff, mean_diff", CV2_TOLERANCES)
def test_cv2_resize_matches_pil_on_photos(size, out, interpolation, max_diff, mean_diff):
  pytest.importorskip("cv2")
  diffs = []
  for name in PHOTOS:
    img = _decode(_photo_jpeg(name, *size))
    pil = T.resize_image(img, out[1], out[0], interpolation, "pil")
    diffs.append(_diff(T.resize_image(img, out[1], out[0], interpolation, "cv2"), pil))
  d = np.concatenate([x.ravel() for x in diffs])
  assert d.max() <= max_diff and d.mean() <= mean_diff, (d.max(), d.mean())


def _coco(tmp_path, sizes, corrupt=(), missing=()):
  """COCO-format fixture of photo JPEGs (w, h); two boxes per image."""
  (tmp_path / "img").mkdir(exist_ok=True)
  images, anns = [], []
  for i, (w, h) in enumerate(sizes):
    name = f"{i}.jpg"
    if i in corrupt:
      (tmp_path / "img" / name).write_bytes(b"not a jpeg")
    elif i not in missing:
      (tmp_path / "img" / name).write_bytes(_photo_jpeg(PHOTOS[i % 4], w, h))
    images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    for j, box in enumerate([[w * 0.1, h * 0.2, w * 0.3, h * 0.4], [w * 0.5, h * 0.1, 33, 17]]):
      anns.append({"id": 2 * i + j, "image_id": i + 1, "category_id": 1, "bbox": box, "iscrowd": 0})
  path = tmp_path / "instances.json"
  path.write_text(
      json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]})
  )
  return path, tmp_path / "img"


def test_coco_draft_record_resizes_to_the_full_decode_geometry(tmp_path):
  ann, img = _coco(tmp_path, [(2400, 1800), (640, 480)])
  full, draft = CocoDetection(ann, img), CocoDetection(ann, img, draft_for=(800, 1333))
  rec = draft[0]
  assert rec["image"].shape == (900, 1200, 3) and rec["orig_size"].tolist() == [1800, 2400]
  np.testing.assert_allclose(rec["boxes"], full[0]["boxes"] / 2, rtol=1e-6)
  assert "orig_size" not in draft[1]  # 640x480: decoded as without draft_for
  tf = T.detection_transforms(train=False, test_size=800, max_size=1333, normalize=False)
  for i in range(2):
    a = T.apply_transforms(full[i], tf)
    b = T.apply_transforms(draft[i], tf)
    assert a["image_size"].tolist() == b["image_size"].tolist() == [800, 1067]
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)
    assert _diff(a["image"], b["image"]).max() <= (14 if i == 0 else 0)


def test_uint8_batches_normalised_on_device_match_host_float32_batches():
  jnp = pytest.importorskip("jax.numpy")
  rng = np.random.default_rng(0)
  src = [
      {
          "image": rng.integers(0, 256, (40 + 7 * i, 50 - 3 * i, 3), np.uint8),
          "captions": ["a"],
          "image_id": i,
      }
      for i in range(4)
  ]
  tok = lambda texts, context_length=77: np.zeros((len(texts), context_length), np.int32)
  batches = {}
  for normalize in (True, False):
    tf = T.pretrain_transforms(
        short_edge_lengths=(32, 48), max_size=64, tokenize_fn=tok, normalize=normalize
    )
    it = make_pipeline(src, tf, batch_size=4, seed=3, shard_by_process=False, num_epochs=1)
    batches[normalize] = next(it)
  raw = batches[False]
  assert raw["image"].dtype == np.uint8 and batches[True]["image"].dtype == np.float32
  dev = T.normalize_on_device(jnp.asarray(raw["image"]), jnp.asarray(raw["image_mask"]))
  np.testing.assert_allclose(np.asarray(dev), batches[True]["image"], atol=1e-5)


class Indexed:
  """Record i is its own index (and a small image); None marks a bad record dropped in skip mode.

  Module level, so that grain's worker processes import it by name."""

  def __init__(self, n, bad=()):
    self.n, self.bad = n, set(bad)

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if i in self.bad:
      return None
    return {"i": np.int64(i), "image": np.full((16, 24, 3), i % 256, np.uint8)}


def _indexed_pipeline(num_workers, **kw):
  return make_pipeline(
      Indexed(50, bad={3, 20, 21}),
      batch_size=4,
      seed=1,
      shard_by_process=False,
      num_workers=num_workers,
      **kw,
  )


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
  )


def test_workers_give_the_same_batches_and_resume_across_worker_counts():
  """Same batches with 0 and 2 workers (skipped records and epoch boundaries included); the
  state is one position, so a state saved with n workers resumes with m (0 included)."""
  plain = _indexed_pipeline(0)
  want = _take(plain, 30)  # 120 records: more than two epochs of 47
  with _indexed_pipeline(2) as it:
    assert _same(_take(it, 7), want[:7])
    state = json.loads(json.dumps(it.get_state()))
    assert state == {"next_index": 28}  # 28 records read for 7 batches: one was skipped
  resumed = _indexed_pipeline(0)
  resumed.set_state(state)
  assert _same(_take(resumed, 10), want[7:17])
  plain_state = resumed.get_state()
  with _indexed_pipeline(1) as it:
    it.set_state(plain_state)
    assert _same(_take(it, 13), want[17:30])
  with _indexed_pipeline(2) as it, pytest.raises(ValueError, match="next_index"):
    it.set_state({"something": "else"})


def test_workers_forward_issue_counts_and_match_in_process_records(tmp_path):
  """Skip-mode COCO with a corrupt and a missing image: with 2 workers the batches equal the
  in-process ones, and the issues counted in the workers reach the main process's counter."""
  sizes = [(640, 480), (480, 640), (500, 375), (640, 427), (612, 612), (640, 480), (427, 640)]
  ann, img = _coco(tmp_path, sizes, corrupt={2}, missing={5})
  tf = T.detection_transforms(
      train=True, short_edge_lengths=(96, 128), max_size=160, normalize=False, backend="cv2"
  )
  runs = {}
  for workers in (0, 2):
    src = CocoDetection(ann, img, policy="skip")
    it = make_pipeline(
        src, tf, batch_size=2, seed=5, shard_by_process=False, num_epochs=1, num_workers=workers
    )
    runs[workers] = (list(it), src.issues.counts, src.report())
    if workers:
      it.close()
  (b0, counts0, report0), (b2, counts2, report2) = runs[0], runs[2]
  assert len(b0) == 2 and _same(b0, b2) and b0[0]["image"].dtype == np.uint8
  assert counts0 == counts2 == {"corrupt_image": 1, "missing_image": 1}
  assert report0 == report2 and "2.jpg" in report2 and "5.jpg" in report2


def test_sources_and_counters_pickle_for_workers(tmp_path):
  """What grain sends to a worker: a TSV source (file handles stay behind), a CachedSource
  (without its cache) and an IssueCounter (a copy with the same counts)."""
  cloudpickle = pytest.importorskip("cloudpickle")
  from regionclip_jax.data.image_text import TsvImageText, write_tsv_pairs
  from regionclip_jax.data.pipeline import CachedSource

  items = [(f"k{i}", _photo_jpeg(PHOTOS[i], 64, 48), [f"photo {i}"]) for i in range(2)]
  write_tsv_pairs(str(tmp_path / "i.tsv"), str(tmp_path / "t.tsv"), items)
  tsv = TsvImageText(str(tmp_path / "i.tsv"), str(tmp_path / "t.tsv"), policy="skip")
  tsv.issues.add("empty_caption", "t.tsv row 9")
  cached = CachedSource(tsv)
  first = cached[1]
  copy = cloudpickle.loads(cloudpickle.dumps(cached))
  assert copy._cache == {} and copy.issues.counts == {"empty_caption": 1}
  assert copy.issues is not tsv.issues and "row 9" in copy.issues.report()
  np.testing.assert_array_equal(copy[1]["image"], first["image"])


def test_padded_images_travel_cropped_and_batch_back_exactly():
  """What a worker sends for NormalizeAndPad's layout (crop, no mask) batches to the very arrays
  of plain stacking, float32 or uint8; records of another layout travel unchanged."""
  from regionclip_jax.data import workers as W

  rng = np.random.default_rng(1)
  for normalize in (True, False):
    pad = T.NormalizeAndPad(40, normalize=normalize)
    records = [
        pad.map({"image": rng.integers(0, 256, (h, w, 3), np.uint8), "image_id": i})
        for i, (h, w) in enumerate([(40, 13), (21, 40), (7, 9)])
    ]
    want = {k: np.stack([r[k] for r in records]) for k in records[0]}
    sent = [W._crop_padding(dict(r)) for r in records]
    assert all(
        s["image_mask"] is None and s["image"].shape[:2] == tuple(s["image_size"]) for s in sent
    )
    got = W.batch_from_workers(sent)
    assert list(got) == list(want) and _same([got], [want])
    assert got["image"].dtype == want["image"].dtype
    mixed = W.batch_from_workers([sent[0], dict(records[1]), sent[2]])
    assert _same([mixed], [want])
  odd = T.NormalizeAndPad(40, normalize=False).map({"image": np.ones((5, 5, 3), np.uint8)})
  odd["image"][30, 30] = 7  # not zero outside the valid region: must not be cropped
  assert W._crop_padding(dict(odd))["image"].shape == (40, 40, 3)
