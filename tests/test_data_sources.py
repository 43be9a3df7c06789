"""COCO / captions / TSV / JSONL sources on tiny fixtures built here, including broken ones."""

import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from PIL import Image

from regionclip_jax.data.coco import CocoCaptions, CocoDetection
from regionclip_jax.data.image_text import JsonlImageText, TsvImageText, write_tsv_pairs
from regionclip_jax.data.validation import DataError


def _jpeg(h, w, seed=0):
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


@pytest.fixture
def coco_dir(tmp_path):
  imgs = tmp_path / "images"
  imgs.mkdir()
  for i, (h, w) in enumerate([(40, 60), (50, 30), (20, 20), (30, 30)], 1):
    (imgs / f"{i:06d}.jpg").write_bytes(_jpeg(h, w, i))
  (imgs / "000004.jpg").write_bytes(b"not a jpeg at all")  # corrupt
  cats = [
      {"id": 1, "name": "person"},
      {"id": 18, "name": "dog"},
      {"id": 24, "name": "zebra"},
      {"id": 90, "name": "toothbrush"},
  ]
  images = [
      {"id": i, "file_name": f"{i:06d}.jpg", "height": h, "width": w}
      for i, (h, w) in enumerate([(40, 60), (50, 30), (20, 20), (30, 30), (10, 10)], 1)
  ]
  anns = [
      {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20], "iscrowd": 0},
      {"id": 2, "image_id": 1, "category_id": 18, "bbox": [5, 5, 5, 5], "iscrowd": 0},
      {
          "id": 3,
          "image_id": 1,
          "category_id": 24,
          "bbox": [50, 30, 20, 20],
          "iscrowd": 0,
      },  # sticks out
      {"id": 4, "image_id": 2, "category_id": 24, "bbox": [3, 3, 0, 4], "iscrowd": 0},  # zero width
      {"id": 5, "image_id": 2, "category_id": 90, "bbox": [0, 0, 30, 50], "iscrowd": 0},
      {"id": 6, "image_id": 2, "category_id": 1, "bbox": [0, 0, 9, 9], "iscrowd": 1},
      {"id": 7, "image_id": 3, "category_id": 18, "bbox": [2, 2, 4, 4], "iscrowd": 0},  # novel only
      {"id": 8, "image_id": 4, "category_id": 1, "bbox": [2, 2, 4, 4], "iscrowd": 0},
      {
          "id": 9,
          "image_id": 5,
          "category_id": 1,
          "bbox": [2, 2, 4, 4],
          "iscrowd": 0,
      },  # file missing
  ]
  (tmp_path / "instances.json").write_text(
      json.dumps({"images": images, "annotations": anns, "categories": cats})
  )
  caps = [
      {"image_id": 1, "caption": "a man and a dog."},
      {"image_id": 1, "caption": "  "},
      {"image_id": 2, "caption": "a zebra."},
  ]
  (tmp_path / "captions.json").write_text(json.dumps({"images": images[:3], "annotations": caps}))
  return tmp_path


def test_coco_ovd_base_split_skip_mode(coco_dir):
  ds = CocoDetection(
      coco_dir / "instances.json",
      coco_dir / "images",
      "coco_ovd_base",
      policy="skip",
      captions=coco_dir / "captions.json",
  )
  assert len(ds.class_names) == 48 and ds.class_names[0] == "person"
  # image 3 has only a novel box -> dropped (empty); images 1, 2, 4, 5 remain.
  assert [r["image_id"] for r in ds._records] == [1, 2, 4, 5]
  r = ds[0]
  assert r["image"].shape == (40, 60, 3) and r["image"].dtype == np.uint8
  np.testing.assert_allclose(
      r["boxes"], [[1, 2, 11, 22], [50, 30, 60, 40]]
  )  # second clipped to 60x40
  assert [ds.class_names[l] for l in r["labels"]] == ["person", "zebra"]
  assert r["captions"] == ["a man and a dog."]
  r2 = ds[1]
  assert [ds.class_names[l] for l in r2["labels"]] == ["toothbrush"]
  assert ds[2] is None and ds[3] is None  # corrupt, missing
  counts = ds.issues.counts
  assert counts == {
      "box_outside_image": 1,
      "empty_box": 1,
      "empty_caption": 1,
      "corrupt_image": 1,
      "missing_image": 1,
  }
  assert ds.filtered == {"crowd": 1, "outside_split": 2, "image_without_boxes": 1}
  assert "corrupt_image: 1" in ds.report() and "000004.jpg" in ds.report()


def test_coco_strict_and_other_splits(coco_dir):
  with pytest.raises(DataError, match=r"instances.json image 1 box 1: box_outside_image"):
    CocoDetection(
        coco_dir / "instances.json", coco_dir / "images", "coco_ovd_base", policy="strict"
    )
  novel = CocoDetection(
      coco_dir / "instances.json", coco_dir / "images", "coco_ovd_novel", policy="skip"
  )
  assert [r["image_id"] for r in novel._records] == [1, 3]
  full = CocoDetection(
      coco_dir / "instances.json", coco_dir / "images", "all", policy="skip", drop_empty=False
  )
  assert full.class_names == ["person", "dog", "zebra", "toothbrush"] and len(full) == 5
  with pytest.raises(ValueError, match="unknown split 'coco_48'"):
    CocoDetection(coco_dir / "instances.json", coco_dir / "images", "coco_48")


def test_lvis_split_from_frequency_field(tmp_path):
  cats = [
      {"id": 1, "name": "aerosol_can", "frequency": "c"},
      {"id": 2, "name": "air_conditioner", "frequency": "f"},
      {"id": 3, "name": "airplane", "frequency": "r"},
  ]
  images = [{"id": 7, "coco_url": "http://x/train2017/000000000007.jpg", "height": 10, "width": 10}]
  anns = [{"id": 1, "image_id": 7, "category_id": c, "bbox": [1, 1, 3, 3]} for c in (1, 2, 3)]
  (tmp_path / "lvis.json").write_text(
      json.dumps({"images": images, "annotations": anns, "categories": cats})
  )
  (tmp_path / "train2017").mkdir()
  (tmp_path / "train2017" / "000000000007.jpg").write_bytes(_jpeg(10, 10))
  base = CocoDetection(tmp_path / "lvis.json", tmp_path, "lvis_base")
  assert base.class_names == ["aerosol_can", "air_conditioner"] and base[0]["labels"].tolist() == [
      0,
      1,
  ]
  rare = CocoDetection(tmp_path / "lvis.json", tmp_path, "lvis_rare")
  assert rare.class_names == ["airplane"] and rare[0]["labels"].tolist() == [0]


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "not readable json"),
        (json.dumps({"images": [], "annotations": []}), "lacks required field 'categories'"),
        (
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "a.jpg", "width": 3}],
                    "annotations": [],
                    "categories": [],
                }
            ),
            r"image 0 \(id 1\) lacks required field\(s\) \['height'\]",
        ),
        (
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "a.jpg", "width": 3, "height": 3}],
                    "annotations": [
                        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}
                    ],
                    "categories": [{"id": 1, "name": "person"}],
                }
            ),
            r"annotation 0 \(id 4\) refers to unknown image 2",
        ),
    ],
)
def test_coco_structural_errors_name_file_and_record(tmp_path, content, message):
  p = tmp_path / "bad.json"
  p.write_text(content)
  with pytest.raises(ValueError, match=message) as e:
    CocoDetection(p, tmp_path, policy="skip")
  assert "bad.json" in str(e.value) and "\n" not in str(e.value)


def test_coco_captions(coco_dir):
  ds = CocoCaptions(coco_dir / "captions.json", coco_dir / "images", policy="skip")
  assert len(ds) == 2  # image 3 has no caption: dropped, counted
  assert ds[0]["captions"] == ["a man and a dog."] and ds[1]["image"].shape == (50, 30, 3)
  assert ds.issues.counts == {"empty_caption": 1, "image_without_captions": 1}
  with pytest.raises(DataError, match="captions.json annotation 1"):
    CocoCaptions(coco_dir / "captions.json", coco_dir / "images", policy="strict")


def test_tsv_pairs(tmp_path):
  items = [
      ("k0", _jpeg(8, 12, 0), ["one", "two"]),
      ("k1", b"garbage", ["three"]),
      ("k2", _jpeg(6, 6, 2), ["", "four"]),
  ]
  write_tsv_pairs(str(tmp_path / "img.tsv"), str(tmp_path / "txt.tsv"), items)
  ds = TsvImageText(str(tmp_path / "img.tsv"), str(tmp_path / "txt.tsv"), policy="skip")
  assert len(ds) == 3
  r = ds[0]
  assert r["image"].shape == (8, 12, 3) and r["captions"] == ["one", "two"] and r["key"] == "k0"
  assert ds[1] is None and ds[2]["captions"] == ["four"]
  assert ds.issues.counts == {"corrupt_image": 1, "empty_caption": 1}
  # Sharded input, with a .lineidx beside one shard.
  write_tsv_pairs(
      str(tmp_path / "img2.tsv"), str(tmp_path / "txt2.tsv"), [("k3", _jpeg(5, 5), ["five"])]
  )
  (tmp_path / "img2.lineidx").write_text("0\n")
  two = TsvImageText(
      [str(tmp_path / "img.tsv"), str(tmp_path / "img2.tsv")],
      [str(tmp_path / "txt.tsv"), str(tmp_path / "txt2.tsv")],
      policy="skip",
  )
  assert len(two) == 4 and two[3]["key"] == "k3"
  strict = TsvImageText(str(tmp_path / "img.tsv"), str(tmp_path / "txt.tsv"))
  with pytest.raises(DataError, match=r"img.tsv row 2 \(key k1\): corrupt_image"):
    strict[1]
  # Mismatched keys are structural.
  (tmp_path / "txt3.tsv").write_text('zz\t{"captions": ["x"]}\n' * 3)
  with pytest.raises(ValueError, match="txt3.tsv: row 1 key 'zz' does not match image key 'k0'"):
    TsvImageText(str(tmp_path / "img.tsv"), str(tmp_path / "txt3.tsv"))[0]


def test_jsonl(tmp_path):
  (tmp_path / "a.jpg").write_bytes(_jpeg(9, 7))
  lines = [
      {"image": "a.jpg", "captions": ["x", "y"]},
      {"image": "missing.jpg", "caption": "z"},
      {"image": "a.jpg", "captions": [""]},
  ]
  (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
  ds = JsonlImageText(tmp_path / "d.jsonl", policy="skip")
  assert len(ds) == 2 and ds[0]["captions"] == ["x", "y"] and ds[0]["image"].shape == (9, 7, 3)
  assert ds[1] is None
  assert ds.issues.counts == {"empty_caption": 1, "record_without_captions": 1, "missing_image": 1}
  (tmp_path / "bad.jsonl").write_text(
      '{"image": "a.jpg", "captions": ["x"]}\n{"captions": ["y"]}\n'
  )
  with pytest.raises(ValueError, match="bad.jsonl: line 2 lacks required field image"):
    JsonlImageText(tmp_path / "bad.jsonl")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=20),
            st.integers(),
            st.none(),
            st.lists(st.text(max_size=5), max_size=3),
        ),
        max_size=4,
    )
)
@example([None, 5])
@example(["a", ["b", ""], 3, None])
def test_jsonl_parser_never_crashes_unexpectedly(tmp_path_factory, junk):
  """Arbitrary json values as captions: parsed (bad captions dropped and counted), or a one-line
  ValueError naming the file and line."""
  d = tmp_path_factory.mktemp("j")
  (d / "x.jsonl").write_text(
      "\n".join(json.dumps({"image": "a.jpg", "captions": j}) for j in junk) + "\n"
  )
  try:
    ds = JsonlImageText(d / "x.jsonl", policy="skip")
    assert all(c and isinstance(c, str) for rec in ds._records for c in rec[2])
  except ValueError as e:
    assert "x.jsonl" in str(e) and "line" in str(e) and "\n" not in str(e)
