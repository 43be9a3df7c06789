"""Score ensemble of a fine-tuned detector with its frozen pretrained init (ViLD-ensemble / F-VLM):
the formula against a plain numpy transcription of the papers' equation, the predictor end to end, the export.
"""

import dataclasses

import jax
import numpy as np
import pytest

from regionclip_jax.detection import builders, export
from regionclip_jax.detection.postprocess import ensemble_with_pretrained
from regionclip_jax.detection.predictor import DetectorPredictor
from regionclip_jax.detection.settings import InferenceSettings
from regionclip_jax.models.clip import get_config


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_ensemble_matches_the_published_formula():
  rng = np.random.default_rng(0)
  k = 5
  det = rng.normal(size=(2, 7, k + 1)) * 3
  pre = rng.normal(size=(2, 7, k + 1)) * 3
  seen = np.array([True, True, False, True, False])
  out = np.asarray(ensemble_with_pretrained(det, pre, seen, (0.35, 0.65)))
  p_det, p_pre = _softmax(det), _softmax(pre[..., :k])  # the pretrained model has no background
  w = np.where(seen, 0.35, 0.65)
  want = p_det[..., :k] ** (1 - w) * p_pre**w
  np.testing.assert_allclose(out[..., :k], want, rtol=1e-5)
  np.testing.assert_allclose(out[..., k], p_det[..., k], rtol=1e-5)
  # weight 0: the detector alone
  alone = np.asarray(ensemble_with_pretrained(det, pre, seen, (0.0, 0.0)))
  np.testing.assert_allclose(alone, p_det, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def two_detectors():
  det = builders.build_detector(get_config("tiny_rn"), pooler_resolution=4, freeze_at=2)
  return det, builders.init_detector(det, 64, seed=0), builders.init_detector(det, 64, seed=1)


def _inputs():
  rng = np.random.default_rng(1)
  images = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
  sizes = np.full((2, 2), 64.0, np.float32)
  boxes = np.array([[[4, 4, 30, 30], [20, 10, 60, 40], [0, 30, 33, 63]]] * 2, np.float32)
  text = rng.normal(size=(4, 64)).astype(np.float32)
  return images, sizes, boxes, text


def test_predictor_ensemble_end_to_end(two_detectors):
  det, tuned, init = two_detectors
  images, sizes, boxes, text = _inputs()
  seen = np.array([True, True, False, False])
  settings = InferenceSettings(score_thresh=0.0, topk=12, temperature=0.1, apply_deltas=False)
  alone = DetectorPredictor(det, tuned, settings)(images, sizes, text, boxes=boxes)

  def ensemble(weights):
    s = dataclasses.replace(settings, pretrained_score_weights=weights)
    return DetectorPredictor(det, tuned, s, pretrained_variables=init)(
        images, sizes, text, boxes=boxes, seen=seen
    )

  zero = ensemble((0.0, 0.0))
  for key in ("scores", "classes", "roi_index"):
    np.testing.assert_allclose(zero[key], alone[key], rtol=1e-4, atol=1e-6)
  # weight 1 on unseen classes: their scores are the pretrained model's class softmax of that RoI
  both = ensemble((0.0, 1.0))
  feats, _ = jax.jit(det.apply)(init, images, boxes)
  f = np.asarray(feats) / np.linalg.norm(np.asarray(feats), axis=-1, keepdims=True)
  t = text / np.linalg.norm(text, axis=-1, keepdims=True)
  p_pre = _softmax(f @ t.T / 0.1)
  n_checked = 0
  for i in range(2):
    for s, c, r, v in zip(
        both["scores"][i], both["classes"][i], both["roi_index"][i], both["valid"][i]
    ):
      if v and not seen[c]:
        np.testing.assert_allclose(s, p_pre[i, r, c], rtol=1e-4)
        n_checked += 1
  assert n_checked > 0
  assert not np.allclose(both["scores"], alone["scores"])


def test_predictor_ensemble_needs_its_parts(two_detectors):
  det, tuned, init = two_detectors
  images, sizes, boxes, text = _inputs()
  with pytest.raises(ValueError, match="go together"):
    DetectorPredictor(det, tuned, InferenceSettings(pretrained_score_weights=(0.35, 0.65)))
  with pytest.raises(ValueError, match="go together"):
    DetectorPredictor(det, tuned, InferenceSettings(), pretrained_variables=init)
  pred = DetectorPredictor(
      det,
      tuned,
      InferenceSettings(pretrained_score_weights=(0.35, 0.65)),
      pretrained_variables=init,
  )
  with pytest.raises(ValueError, match=r"seen \[K=4\]"):
    pred(images, sizes, text, boxes=boxes)
  with pytest.raises(ValueError, match=r"seen \[K=4\]"):
    pred(images, sizes, text, boxes=boxes, seen=[True, False])


def test_export_carries_the_pretrained_init(tmp_path, two_detectors):
  det, tuned, init = two_detectors
  meta = {
      "kind": "detector",
      "clip_config": get_config("tiny_rn").to_dict(),
      "pooler_resolution": 4,
  }
  export.export_model(str(tmp_path / "a"), tuned, meta, pretrained=init)
  export.export_model(str(tmp_path / "b"), tuned, meta)
  got = export.load_export_pretrained(str(tmp_path / "a"))
  flat_got, flat_want = jax.tree.leaves(got), jax.tree.leaves(init)
  assert len(flat_got) == len(flat_want)
  for a, b in zip(flat_got, flat_want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert export.load_export_pretrained(str(tmp_path / "b")) is None


def test_zero_shot_tool_scores_an_export_with_its_ensemble(tmp_path, two_detectors):
  from regionclip_jax.tools.zero_shot import ZeroShotDetector

  det, tuned, init = two_detectors
  images, sizes, boxes, text = _inputs()
  names = ["circle", "square", "crescent", "chevron"]
  meta = {
      "kind": "detector",
      "clip_config": get_config("tiny_rn").to_dict(),
      "pooler_resolution": 4,
      "class_names": names,
      "base_names": names[:2],
      "novel_names": names[2:],
      "temperature": 0.1,
      "pretrained_score_weights": [0.35, 0.65],
  }
  export.export_model(str(tmp_path / "export"), tuned, meta, pretrained=init)
  tool = ZeroShotDetector(
      str(tmp_path / "export"), test_size=64, max_size=64, score_thresh=0.0, topk=12
  )
  assert tool.predictor.inference.temperature == 0.1  # the export's, not the official 0.01
  image = (np.random.default_rng(2).uniform(size=(64, 64, 3)) * 255).astype(np.uint8)
  got = tool.detect(image, text, boxes=boxes[0], names=names)
  # every reported (score, class) is the published formula at tau 0.1 for one of the given boxes,
  # with the export's base classes as the seen ones
  x, _, _ = tool.preprocess(image)

  def unit(f):
    f = np.asarray(f)[0]
    return f / np.linalg.norm(f, axis=-1, keepdims=True)

  t = text / np.linalg.norm(text, axis=-1, keepdims=True)
  f_det = unit(jax.jit(det.apply)(tuned, x, boxes[:1])[0])
  f_pre = unit(jax.jit(det.apply)(init, x, boxes[:1])[0])
  p_det = _softmax(np.concatenate([f_det @ t.T, np.zeros((3, 1))], -1) / 0.1)[:, :4]
  p_pre = _softmax(f_pre @ t.T / 0.1)
  w = np.array([0.35, 0.35, 0.65, 0.65])
  want = p_det ** (1 - w) * p_pre**w  # [R, K]
  assert len(got["scores"]) > 0
  for score, c in zip(got["scores"], got["classes"]):
    assert np.min(np.abs(want[:, c] - score)) < 1e-5 * max(1.0, score), (score, c, want[:, c])
  with pytest.raises(ValueError, match="seen"):
    tool.detect(image, text, boxes=boxes[0])  # the ensemble needs to know which names were trained
  # an export whose model.json asks for the ensemble but lost the init is refused, not degraded
  export.export_model(str(tmp_path / "lost"), tuned, meta)
  with pytest.raises(ValueError, match="pretrained_variables.msgpack is missing"):
    ZeroShotDetector(str(tmp_path / "lost"), test_size=64, max_size=64)


def _ensemble_predictor(det, tuned, init):
  """-> (the settings without the ensemble, a predictor with it over the frozen init)."""
  settings = InferenceSettings(score_thresh=0.0, topk=12, temperature=0.1, apply_deltas=False)
  pred = DetectorPredictor(
      det,
      tuned,
      dataclasses.replace(settings, pretrained_score_weights=(0.35, 0.65)),
      pretrained_variables=init,
  )
  return settings, pred


def test_without_ensemble_shares_the_compiled_programs(two_detectors):
  det, tuned, init = two_detectors
  images, sizes, boxes, text = _inputs()
  settings, pred = _ensemble_predictor(det, tuned, init)
  pred(images, sizes, text, boxes=boxes, seen=[True, True, False, False])
  alone = pred.without_ensemble()
  assert alone.pretrained_variables is None and alone.inference == settings
  assert alone._regions is pred._regions  # the backbone program is not compiled twice
  want = DetectorPredictor(det, tuned, settings)(images, sizes, text, boxes=boxes)
  got = alone(images, sizes, text, boxes=boxes)
  np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5)


def test_also_alone_scores_the_detector_alone_in_the_same_pass(two_detectors):
  """One call with also_alone gives the ensemble's detections and, under "alone", exactly what
  the detector alone gives (the fine-tuning evaluation scores both from one pass)."""
  det, tuned, init = two_detectors
  images, sizes, boxes, text = _inputs()
  seen = [True, True, False, False]
  settings, pred = _ensemble_predictor(det, tuned, init)
  both = pred(images, sizes, text, boxes=boxes, seen=seen, also_alone=True)
  ensemble = pred(images, sizes, text, boxes=boxes, seen=seen)
  alone = DetectorPredictor(det, tuned, settings)(images, sizes, text, boxes=boxes)
  for key in ("boxes", "scores", "classes", "valid"):
    np.testing.assert_array_equal(both[key], ensemble[key])
    np.testing.assert_array_equal(both["alone"][key], alone[key])
  assert not np.array_equal(both["scores"], both["alone"]["scores"])  # two different scorings
  assert pred.without_ensemble()._classify is pred._classify_alone  # one alone classifier
  # a predictor without the ensemble has nothing extra to give
  assert "alone" not in DetectorPredictor(det, tuned, settings)(
      images, sizes, text, boxes=boxes, also_alone=True
  )
