"""Zero-shot inference end to end on a real photo (scikit-image): a converted CLIP checkpoint,
a user's vocabulary, sliding-window or RPN proposals -> PNG with boxes + detections.json."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from regionclip_jax.detection import builders, export
from tiny_models import save_tiny_clip


def _tiny_clip_dir(tmp_path):
  return save_tiny_clip(str(tmp_path / "clip"))


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
  skd = pytest.importorskip("skimage.data")
  d = tmp_path_factory.mktemp("photos")
  img = skd.astronaut()[::4, ::4]  # 128 x 128, keeps the test light
  Image.fromarray(img).save(d / "astronaut.jpg")
  Image.fromarray(skd.chelsea()[::4, ::4]).save(d / "chelsea.png")
  return d


def test_zero_shot_folder_real_photo_sliding_windows(tmp_path, photo_dir):
  from configs import zero_shot as zcfg
  from regionclip_jax.tools import zero_shot

  ckpt, _ = _tiny_clip_dir(tmp_path)
  c = zcfg.get_config("folder")
  z = c.zero_shot
  z.checkpoint, z.images, z.vocabulary = ckpt, str(photo_dir), "person, cat,rocket"
  z.test_size, z.max_size, z.score_thresh, z.topk = 96, 128, 0.0, 5
  out = zero_shot.run(c, str(tmp_path / "wd"))
  res_dir = tmp_path / "wd" / "zero_shot"
  dets = json.load(open(res_dir / "detections.json"))
  assert out["num_detections"] == len(dets) > 0
  for name, (h, w) in (("astronaut", (128, 128)), ("chelsea", (75, 113))):
    png = np.asarray(Image.open(res_dir / f"{name}.png"))
    assert png.shape[:2] == (h, w) and png.dtype == np.uint8
  d = dets[0]
  assert set(d) >= {"image_id", "file_name", "category_name", "score", "bbox"}
  assert d["category_name"] in ("person", "cat", "rocket")
  for d in dets:
    x, y, bw, bh = d["bbox"]
    assert -1e-3 <= x and x + bw <= 128 + 1e-3 and bw > 0 and bh > 0


def test_zero_shot_with_rpn_and_gt_boxes(tmp_path, photo_dir):
  from regionclip_jax.tools.zero_shot import ZeroShotDetector, parse_vocabulary, sliding_window_boxes

  ckpt, cfg = _tiny_clip_dir(tmp_path)
  rpn, gen = builders.build_rpn(cfg, anchor_sizes=(16, 32, 64))
  rv = builders.init_rpn(rpn, 64)
  export.export_model(
      str(tmp_path / "rpn" / "export"),
      rv,
      {
          "kind": "rpn",
          "clip_config": cfg.to_dict(),
          "anchor_sizes": [16, 32, 64],
          "aspect_ratios": [0.5, 1.0, 2.0],
          "stride": 16,
      },
  )
  det = ZeroShotDetector(
      ckpt,
      rpn=str(tmp_path / "rpn"),
      test_size=64,
      max_size=96,
      score_thresh=0.0,
      topk=7,
      rpn_fusion="sigmoid",
  )
  names = parse_vocabulary("person,cat")
  emb = det.text_embeddings(names)
  assert emb.shape == (2, 64)
  img = np.asarray(Image.open(photo_dir / "astronaut.jpg"))
  out = det.detect(img, emb)
  assert out["boxes"].shape[1] == 4 and 0 < len(out["scores"]) <= 7
  # given boxes (zero-shot protocol with GT): classified as given, in original pixels
  gt = np.array([[10, 10, 60, 90], [70, 20, 120, 60]], np.float32)
  out = det.detect(img, emb, boxes=gt)
  assert all(any(np.allclose(b, g, atol=1e-3) for g in gt) for b in out["boxes"])
  with pytest.raises(ValueError, match="duplicate"):
    parse_vocabulary("cat,cat")
  assert sliding_window_boxes(64, 96).shape[1] == 4


@pytest.mark.parametrize("log_scale, want", [(np.log(8.0), 0.125), (np.log(400.0), 0.01)])
def test_classifier_temperature_from_checkpoint(tmp_path, log_scale, want):
  """tau = 1 / the checkpoint's learned logit scale, capped at 100 as CLIP caps it (OpenAI CLIP
  -> the official 0.01); the input config is left untouched."""
  import ml_collections
  from regionclip_jax.detection.finetune import with_classifier_temperature
  from regionclip_jax.models.checkpoints import save_converted
  from regionclip_jax.models.clip import load

  src, _ = _tiny_clip_dir(tmp_path)
  loaded = load(src)
  params = dict(
      jax.tree.map(np.asarray, loaded.params), logit_scale=np.asarray(log_scale, np.float32)
  )
  path = str(tmp_path / "scaled")
  save_converted(path, loaded.config, params, source="test")
  cfg = ml_collections.ConfigDict(
      {"roi_heads": {"temperature": 0.01, "temperature_from_checkpoint": path}}
  )
  out = with_classifier_temperature(cfg)
  assert out.roi_heads.temperature == pytest.approx(want, rel=1e-5)
  assert cfg.roi_heads.temperature == 0.01
  cfg.roi_heads.temperature_from_checkpoint = ""
  assert with_classifier_temperature(cfg) is cfg
