"""RegionCLIP pretraining (`stages.run`, what main runs for a real-data preset) on every image-text
source `data.source` selects, each a tiny dataset of real photos built here: 2 steps of a tiny
CLIP, a finite loss, a checkpoint. Then the config errors of a source with an empty key."""

import io
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from configs import pretrain as pretrain_config
from regionclip_jax import stages
from regionclip_jax.data.array_record import write_array_record
from regionclip_jax.data.image_text import write_tsv_pairs
from regionclip_jax.train.compile_cache import compilation_cache
from regionclip_jax.pretrain import sources
from regionclip_jax.tools.make_example_dataset import write_tiny_clip

PHOTOS = {  # scikit-image photo -> captions
    "astronaut": ["an astronaut in front of a flag", "a person in a space suit"],
    "coffee": ["a cup of coffee on a saucer"],
    "chelsea": ["a tabby cat looking up"],
    "rocket": ["a rocket on the launch pad", "a launch tower"],
}
CONCEPTS = ("person", "cup", "cat", "rocket", "flag", "tower")


def _photos(size: int = 96) -> dict[str, bytes]:
  """name -> JPEG bytes of the photo, its longer side `size` px."""
  import skimage.data

  out = {}
  for name in PHOTOS:
    im = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    out[name] = buf.getvalue()
  return out


def _prepare_tfds(data_dir: str, jpegs: dict[str, bytes]) -> None:
  """The photos as a TFDS image-text dataset "tiny_captions" (array_record) in `data_dir`."""
  import tensorflow_datasets as tfds  # heavy: only here

  class TinyCaptions(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict(
              {
                  "image": tfds.features.Image(shape=(None, None, 3)),
                  # the layout of TFDS coco_captions: a sequence of {"text"}
                  "captions": tfds.features.Sequence({"text": np.str_}),
              }
          ),
      )

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, (name, caps) in enumerate(PHOTOS.items()):
        # a file object is stored as is: no TensorFlow needed to encode
        yield i, {"image": io.BytesIO(jpegs[name]), "captions": {"text": caps}}

  TinyCaptions(data_dir=data_dir, file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module", autouse=True)
def xla_cache(tmp_path_factory):
  """The sources give the same shapes, so the step compiles once for the whole module."""
  with compilation_cache(str(tmp_path_factory.mktemp("xla_cache"))):
    yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Every source's files for the same four photos -> {source: {data key: value}}, plus the
  teacher (a random tiny CLIP) and the concepts file."""
  root = tmp_path_factory.mktemp("image_text")
  jpegs = _photos()
  images = root / "images"
  images.mkdir()
  for name, data in jpegs.items():
    (images / f"{name}.jpg").write_bytes(data)
  items = [(name, jpegs[name], caps) for name, caps in PHOTOS.items()]
  write_tsv_pairs(str(root / "pairs.image.tsv"), str(root / "pairs.text.tsv"), items)
  write_array_record(str(root / "pairs.array_record"), items)
  (root / "pairs.jsonl").write_text(
      "".join(
          json.dumps({"image": f"images/{n}.jpg", "captions": c}) + "\n" for n, c in PHOTOS.items()
      )
  )
  coco = {
      "images": [{"id": i, "file_name": f"{n}.jpg"} for i, n in enumerate(PHOTOS, 1)],
      "annotations": [
          {"id": 10 * i + j, "image_id": i, "caption": c}
          for i, caps in enumerate(PHOTOS.values(), 1)
          for j, c in enumerate(caps)
      ],
  }
  (root / "captions.json").write_text(json.dumps(coco))
  tfds_dir = root / "tfds"
  _prepare_tfds(str(tfds_dir), jpegs)
  (root / "concepts.txt").write_text("\n".join(CONCEPTS) + "\n")
  return {
      "clip": write_tiny_clip(str(root / "clip")),
      "concepts": str(root / "concepts.txt"),
      "tsv": {
          "image_tsv": str(root / "pairs.image.tsv"),
          "text_tsv": str(root / "pairs.text.tsv"),
      },
      "coco_captions": {
          "coco_captions": str(root / "captions.json"),
          "coco_image_dir": str(images),
      },
      "jsonl": {"jsonl_path": str(root / "pairs.jsonl")},
      "tfds": {"tfds_name": "tiny_captions", "tfds_data_dir": str(tfds_dir)},
      "array_record": {"array_record_path": str(root / "pairs.array_record")},
  }


def _config(source: str, data: dict, num_workers: int = 0):
  """The official CC3M preset with a tiny model, tiny images and 2 steps on `source`."""
  c = pretrain_config.get_config("rn50_cc3m")
  c.data.source = source
  for k, v in data[source].items():
    c.data[k] = v
  c.data.short_edge_lengths = (64, 80)
  c.data.max_size = 96
  c.data.num_workers = num_workers
  c.data.context_length = 16
  c.model.student = c.model.teacher = "tiny_rn"
  c.model.teacher_checkpoint = data["clip"]
  c.model.concepts_file = data["concepts"]
  c.proposals.kind = "random"  # no RPN: the official one needs a trained base-class RPN
  c.proposals.num = 8
  c.batch_size = 3  # one region-contrastive group
  c.num_steps = 2
  c.log_every = 1
  c.checkpoint_every = 2
  c.async_checkpoints = False
  c.optimizer.warmup_steps = 1
  return c


def _losses(workdir) -> list[float]:
  with open(os.path.join(workdir, "tensorboard", "metrics.jsonl")) as f:
    return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.mark.parametrize(
    "source, num_workers",
    [("tsv", 1), ("coco_captions", 0), ("jsonl", 0), ("tfds", 1), ("array_record", 1)],
)
def test_pretrains_on_source(data, tmp_path, source, num_workers):
  """A grain worker process for the sources the real presets read that way (they must pickle)."""
  src = sources.real_source(_config(source, data))
  assert len(src) == len(PHOTOS)
  assert sorted(src[i]["captions"][0] for i in range(len(src))) == sorted(
      c[0] for c in PHOTOS.values()
  )
  results = stages.run(_config(source, data, num_workers), str(tmp_path))
  losses = _losses(tmp_path)
  assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
  assert os.path.isdir(tmp_path / "checkpoints" / "2")
  assert (tmp_path / "student" / "config.json").exists() and results["num_steps"] == 2


@pytest.mark.parametrize("source", ["tsv", "coco_captions", "jsonl", "tfds", "array_record"])
def test_empty_source_key_is_named(data, source):
  c = _config(source, data)
  key = sources.REQUIRED_KEYS[source][-1][0]
  c.data[key] = ""
  with pytest.raises(ValueError, match=rf"data.source='{source}' needs data.{key} \(") as e:
    sources.real_source(c)
  assert "\n" not in str(e.value)


def test_unknown_source_lists_the_accepted_ones(data):
  c = _config("tsv", data)
  c.data.source = "webdataset"
  with pytest.raises(
      ValueError,
      match=r"data.source='webdataset' is not one of \['shapes_world', 'tsv', 'coco_captions', 'jsonl', 'tfds', 'array_record'\]",
  ):
    sources.real_source(c)


def test_tfds_feature_keys_are_checked(data):
  c = _config("tfds", data)
  c.data.tfds_caption_key = "caption"
  with pytest.raises(
      ValueError, match="tfds dataset 'tiny_captions' lacks required feature 'caption'"
  ):
    sources.real_source(c)
