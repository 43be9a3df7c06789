"""TFDS array_record source on a tiny dataset built here (no TensorFlow: images go in encoded)."""

import io

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from regionclip_jax.data.tfds_source import TfdsDetection  # noqa: E402
from regionclip_jax.data.validation import DataError  # noqa: E402

_NAMES = ["person", "dog", "traffic_light"]
_OBJECTS = [  # (ymin, xmin, ymax, xmax) normalised, label, crowd
    [((0.1, 0.2, 0.5, 0.6), 0, False), ((0.0, 0.0, 1.0, 0.5), 1, False)],
    [((0.2, 0.2, 0.4, 0.4), 2, True), ((0.5, 0.5, 0.5, 0.9), 0, False)],  # second: zero height
]


class TinyDet(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "image/id": np.int64,
                "objects": tfds.features.Sequence(
                    {
                        "bbox": tfds.features.BBoxFeature(),
                        "label": tfds.features.ClassLabel(names=_NAMES),
                        "is_crowd": np.bool_,
                    }
                ),
            }
        ),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, objs in enumerate(_OBJECTS):
      buf = io.BytesIO()
      Image.fromarray(np.full((20, 40, 3), 40 * i, np.uint8)).save(buf, "PNG")
      buf.seek(0)  # a file object is stored as is: no TensorFlow needed to encode
      yield i, {
          "image": buf,
          "image/id": 100 + i,
          "objects": {
              "bbox": np.array([o[0] for o in objs], np.float32),
              "label": [o[1] for o in objs],
              "is_crowd": [o[2] for o in objs],
          },
      }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  TinyDet(data_dir=str(d), file_format="array_record").download_and_prepare()
  return str(d)


def _by_id(ds):
  return {r["image_id"]: r for r in (ds[i] for i in range(len(ds)))}


def test_reads_by_name_and_converts_boxes(data_dir):
  ds = TfdsDetection("tiny_det", "train", data_dir, policy="skip")
  assert len(ds) == 2 and ds.class_names == ["person", "dog", "traffic light"]
  recs = _by_id(ds)
  r = recs[100]
  assert r["image"].shape == (20, 40, 3) and r["image"].dtype == np.uint8
  np.testing.assert_allclose(r["boxes"], [[8, 2, 24, 10], [0, 0, 20, 20]], atol=1e-4)
  assert r["labels"].tolist() == [0, 1]
  r = recs[101]  # crowd dropped (filtered), zero-height box dropped (counted)
  assert len(r["boxes"]) == 0
  assert ds.issues.counts == {"empty_box": 1} and ds.filtered["crowd"] == 1


def test_class_split_and_strict(data_dir):
  ds = TfdsDetection("tiny_det", "train", data_dir, class_split="coco_ovd_base", policy="skip")
  assert len(ds.class_names) == 48
  r = _by_id(ds)[100]
  assert [ds.class_names[l] for l in r["labels"]] == ["person"]  # dog is novel
  strict = TfdsDetection("tiny_det", "train", data_dir)
  with pytest.raises(
      DataError, match=r"tfds tiny_det/train record \d \(image 101\) box 0: empty_box"
  ):
    _by_id(strict)


def test_missing_dataset_is_one_line(tmp_path):
  with pytest.raises(ValueError, match="tfds dataset 'nope' split 'train'") as e:
    TfdsDetection("nope", "train", str(tmp_path))
  assert "\n" not in str(e.value)
