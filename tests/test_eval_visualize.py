"""Drawing and plotting helpers: pixels where the boxes are, PNGs written, curves parsed."""

import json

import numpy as np
import pytest
from PIL import Image

from regionclip_jax.evaluation import visualize as V


def test_draw_detections_colours_threshold_and_png(tmp_path):
  img = np.full((64, 64, 3), 0.5, np.float32)
  boxes = np.array([[8, 20, 30, 50], [36, 30, 60, 60], [2, 2, 60, 12], [40, 4, 50, 14]], float)
  names = ["circle", "star", "square", "ring"]
  out = V.draw_detections(
      img,
      boxes,
      [0, 1, 2, 3],
      scores=[0.9, 0.8, 0.05, 0.7],
      valid=[True, True, True, False],
      class_names=names,
      novel_names={"star"},
      score_threshold=0.1,
      path=tmp_path / "d" / "x.png",
  )
  assert out.shape == (256, 256, 3) and out.dtype == np.uint8  # upscaled x4 for legibility
  # Left edges, away from the caption: base blue, novel red.
  assert tuple(out[45 * 4, 8 * 4]) == V.BASE_COLOR
  assert tuple(out[50 * 4, 36 * 4]) == V.NOVEL_COLOR
  # Below the threshold (square) and padding (ring): not drawn, background stays grey.
  assert tuple(out[8 * 4, 2 * 4]) == (128, 128, 128)
  assert tuple(out[10 * 4, 40 * 4]) == (128, 128, 128)
  assert np.array_equal(np.asarray(Image.open(tmp_path / "d" / "x.png").convert("RGB")), out)


def test_draw_ground_truth_clip_normalised():
  raw = np.zeros((32, 48, 3), np.float32)
  norm = (raw - np.array(V.CLIP_MEAN)) / np.array(V.CLIP_STD)
  out = V.draw_detections(
      norm,
      [[4, 10, 20, 30]],
      ["heart"],
      clip_normalised=True,
      upscale=1,
      novel=[True],
      line_width=1,
  )
  assert out.shape == (32, 48, 3) and tuple(out[20, 4]) == V.NOVEL_COLOR
  assert tuple(out[31, 47]) == (0, 0, 0)  # denormalised back to black
  with pytest.raises(ValueError, match="labels"):
    V.draw_detections(raw, [[0, 0, 1, 1]], [])


def test_bar_chart_and_region_chart(tmp_path):
  fig = V.bar_chart(
      ["base", "novel"],
      {"teacher": [40, 30], "student": [50, 45]},
      {"teacher": [2, 3], "student": [2, 2]},
      ylabel="%",
      path=tmp_path / "b.png",
  )
  ax = fig.axes[0]
  assert len(ax.patches) == 4 and sorted(p.get_height() for p in ax.patches) == [30, 40, 45, 50]
  assert Image.open(tmp_path / "b.png").size[0] > 100
  with pytest.raises(ValueError, match="teacher"):
    V.bar_chart(["base", "novel"], {"teacher": [1.0]})
  r = {"all": 0.5, "base": 0.6, "novel": 0.3, "se_all": 0.01, "se_base": 0.02, "se_novel": 0.03}
  fig = V.region_recognition_chart({"teacher": r, "student": r}, path=tmp_path / "r.png")
  assert len(fig.axes[0].patches) == 6 and (tmp_path / "r.png").stat().st_size > 0


def test_loss_curves_from_jsonl(tmp_path):
  lines = [
      {"step": 0, "loss": 3.0, "region_distill_loss": 1.0},
      {"step": 10, "eval/ap50": 0.1},
      {"step": 20, "loss": 2.0, "region_distill_loss": 0.5, "lr": 0.1},
  ]
  path = tmp_path / "metrics.jsonl"
  path.write_text("\n".join(json.dumps(l) for l in lines) + "\n\n")
  curves = V.loss_curves(path, path=tmp_path / "c.png", log_y=True)
  assert sorted(curves) == ["loss", "region_distill_loss"]
  np.testing.assert_array_equal(curves["loss"][0], [0, 20])
  np.testing.assert_array_equal(curves["region_distill_loss"][1], [1.0, 0.5])
  assert (tmp_path / "c.png").stat().st_size > 0
  assert list(V.loss_curves(lines, keys=["eval/ap50"])) == ["eval/ap50"]
  with pytest.raises(ValueError, match="nope"):
    V.loss_curves(lines, keys=["nope"])
  (tmp_path / "bad.jsonl").write_text('{"step": 1}\n{oops\n')
  with pytest.raises(ValueError, match="bad.jsonl:2"):
    V.read_jsonl(tmp_path / "bad.jsonl")
