"""Category vocabularies: COCO ids/names, the OVR-CNN COCO split, LVIS frequency splits."""

import json

import pytest

from regionclip_jax.data import categories as C


def test_coco_80_ids_and_gaps():
  assert len(C.COCO_IDS) == len(C.COCO_NAMES) == len(set(C.COCO_NAMES)) == 80
  missing = sorted(set(range(1, 91)) - set(C.COCO_IDS))
  assert missing == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
  assert C.COCO_ID_TO_NAME[1] == "person" and C.COCO_ID_TO_NAME[90] == "toothbrush"
  assert C.COCO_NAME_TO_ID["tv"] == 72 and C.COCO_NAME_TO_ID["hair drier"] == 89
  assert list(C.COCO_IDS) == sorted(C.COCO_IDS)


def test_coco_ovd_split():
  s = C.split_names("coco_ovd")
  assert len(s["base"]) == 48 and len(s["novel"]) == 17
  assert not set(s["base"]) & set(s["novel"])
  assert set(s["base"]) | set(s["novel"]) <= set(C.COCO_NAMES)
  assert {
      "airplane",
      "bus",
      "cat",
      "dog",
      "cow",
      "elephant",
      "umbrella",
      "tie",
      "snowboard",
      "skateboard",
      "cup",
      "knife",
      "cake",
      "couch",
      "keyboard",
      "sink",
      "scissors",
  } == set(s["novel"])
  # The 15 COCO classes outside the 65.
  left_out = set(C.COCO_NAMES) - set(C.COCO_OVD_ALL)
  assert {"traffic light", "hair drier", "teddy bear", "dining table", "sports ball"} <= left_out
  assert len(left_out) == 15 and "person" in s["base"]
  assert list(C.COCO_OVD_ALL) == [n for n in C.COCO_NAMES if n in C.COCO_OVD_ALL]


def test_unknown_split_lists_valid_ones():
  with pytest.raises(ValueError, match="coco_ovd"):
    C.split_names("coco_ovr")


def test_lvis_split_from_frequency_field(tmp_path):
  cats = [
      {"id": 3, "name": "c3", "frequency": "f"},
      {"id": 1, "name": "c1", "frequency": "r"},
      {"id": 2, "name": "c2", "frequency": "c"},
      {"id": 5, "name": "c5", "frequency": "r"},
  ]
  path = tmp_path / "gt.json"
  path.write_text(json.dumps({"categories": cats, "images": [], "annotations": []}))
  ids = C.lvis_split_ids(C.read_categories(path))
  assert ids["novel"] == [1, 5] and ids["base"] == [2, 3]
  assert ids["r"] == [1, 5] and ids["c"] == [2] and ids["f"] == [3]
  assert C.lvis_split_names(cats)["novel"] == ["c1", "c5"]
  with pytest.raises(ValueError, match="frequency"):
    C.lvis_split_ids([{"id": 1, "name": "x", "frequency": "z"}])


def test_shipped_lvis_v1_list():
  cats = C.read_lvis_v1_categories()
  assert [c["id"] for c in cats] == list(range(1, 1204))
  s = C.split_names("lvis_v1")
  assert len(s["base"]) == 866 and len(s["novel"]) == 337
  assert len(s["f"]) == 405 and len(s["c"]) == 461
  by_name = {c["name"]: c for c in cats}
  assert by_name["aerosol_can"]["frequency"] == "c" and by_name["airplane"]["id"] == 3


def test_read_categories_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.json"):
    C.read_categories(tmp_path / "nope.json")
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="bad.json"):
    C.read_categories(bad)
  with pytest.raises(ValueError, match="twice"):
    C.name_to_id([{"id": 1, "name": "a"}, {"id": 2, "name": "a"}])
