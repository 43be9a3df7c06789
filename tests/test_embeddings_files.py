"""Text-embedding files: `.npy` and the official `.pth` (a torch tensor [K, D]) read by one reader,
checked against the number of classes and the width, with one-line errors naming the file."""

import inspect
import types

import numpy as np
import pytest
import torch

from regionclip_jax.detection import builders
from regionclip_jax.models.checkpoints import CheckpointError
from regionclip_jax.models.checkpoints.embeddings import read_embeddings
from regionclip_jax.pretrain.concept_pool import concept_pool


def _raises(fn, *patterns):
  with pytest.raises(CheckpointError) as info:
    fn()
  msg = str(info.value)
  print("\n" + msg)
  assert "\n" not in msg, msg
  for p in patterns:
    assert p in msg, (p, msg)


@pytest.mark.parametrize("dim", [1024, 640])  # RN50 and RN50x4 concept features
def test_official_pth_tensor_round_trips(tmp_path, dim):
  emb = torch.randn(7, dim)
  path = str(tmp_path / "concept_embeds.pth")
  torch.save(emb, path)  # what the official extract_concept_features.py writes
  got = read_embeddings(path, num_classes=7, dim=dim)
  assert got.dtype == np.float32 and got.shape == (7, dim)
  np.testing.assert_array_equal(got, emb.numpy())


def test_npy_round_trips_and_half_precision_pth_widens(tmp_path):
  emb = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
  npy = str(tmp_path / "e.npy")
  np.save(npy, emb)
  np.testing.assert_array_equal(read_embeddings(npy, 5, 64), emb)
  # content decides the format, not the name
  pth = str(tmp_path / "e.npy.pth")
  torch.save(torch.from_numpy(emb).half(), pth)
  np.testing.assert_allclose(read_embeddings(pth, 5, 64), emb, atol=2e-3)


def test_squeezed_single_concept_is_one_row(tmp_path):
  path = str(tmp_path / "one.pth")
  torch.save(torch.randn(1, 640).squeeze(), path)  # the official tool squeezes [1, D] to [D]
  assert read_embeddings(path, 1, 640).shape == (1, 640)


def test_wrong_number_of_classes(tmp_path):
  path = str(tmp_path / "e.pth")
  torch.save(torch.randn(6, 1024), path)
  _raises(lambda: read_embeddings(path, num_classes=48, dim=1024), path, "[48, 1024]", "[6, 1024]")


def test_wrong_width(tmp_path):
  path = str(tmp_path / "e.npy")
  np.save(path, np.zeros((48, 640), np.float32))
  _raises(lambda: read_embeddings(path, num_classes=48, dim=1024), path, "[48, 1024]", "[48, 640]")
  _raises(lambda: read_embeddings(path, dim=1024), "[K, 1024]", "[48, 640]")


def test_a_dict_checkpoint_is_not_an_embeddings_file(tmp_path):
  path = str(tmp_path / "rpn.pth")
  torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(64, 3, 7, 7)}}, path)
  _raises(lambda: read_embeddings(path, 48, 1024), path, "expected a tensor [K, D]", "dict")


def test_bad_files(tmp_path):
  _raises(lambda: read_embeddings(str(tmp_path / "missing.pth")), "not found", "missing.pth")
  path = str(tmp_path / "e3.pth")
  torch.save(torch.zeros(2, 3, 4), path)
  _raises(lambda: read_embeddings(path), path, "(2, 3, 4)")
  garbage = str(tmp_path / "garbage.pth")
  with open(garbage, "wb") as f:
    f.write(b"not a checkpoint at all")
  _raises(lambda: read_embeddings(garbage), garbage)
  obj = str(tmp_path / "obj.npy")
  np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  _raises(lambda: read_embeddings(obj), obj, "unreadable .npy")
  nan = str(tmp_path / "nan.pth")
  torch.save(torch.full((2, 4), float("nan")), nan)
  _raises(lambda: read_embeddings(nan), nan, "NaN")


def test_every_reader_accepts_pth(tmp_path):
  """The fine-tuning / zero-shot reader (builders) and the pretraining concept pool."""
  emb = torch.randn(4, 32)
  path = str(tmp_path / "concept_embeds.pth")
  torch.save(emb, path)
  assert inspect.unwrap(builders.read_embeddings) is read_embeddings
  config = types.SimpleNamespace(model=types.SimpleNamespace(concept_embeddings=path))
  got = concept_pool(config, types.SimpleNamespace(embed_dim=32), None, None, None)
  np.testing.assert_array_equal(got, emb.numpy())
  _raises(
      lambda: concept_pool(config, types.SimpleNamespace(embed_dim=64), None, None, None),
      path,
      "[K, 64]",
      "[4, 32]",
  )


def test_zero_shot_detector_takes_the_official_pth(tmp_path):
  from test_detection_zero_shot import _tiny_clip_dir

  from regionclip_jax.tools.zero_shot import ZeroShotDetector

  ckpt, cfg = _tiny_clip_dir(tmp_path)
  det = ZeroShotDetector(ckpt, test_size=64, max_size=96)
  path = str(tmp_path / "concept_embeds.pth")
  emb = torch.randn(2, cfg.embed_dim)
  torch.save(emb, path)
  np.testing.assert_array_equal(det.text_embeddings(["cat", "dog"], path), emb.numpy())
  _raises(lambda: det.text_embeddings(["cat", "dog", "bird"], path), path, "[3, 64]", "[2, 64]")
  torch.save(torch.randn(2, 1024), path)
  _raises(lambda: det.text_embeddings(["cat", "dog"], path), "[2, 64]", "[2, 1024]")
