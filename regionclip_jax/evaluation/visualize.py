"""Figures: detections drawn on an image, grouped bar charts with error bars, loss curves.

Drawing uses PIL; charts use matplotlib's object API with the Agg canvas (no pyplot global
state, no display needed). Every function writes a PNG when given a path and returns what it drew.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from regionclip_jax import files
from regionclip_jax.models.clip_model import CLIP_MEAN, CLIP_STD

BASE_COLOR = (30, 120, 230)  # blue: classes seen in training
NOVEL_COLOR = (230, 40, 40)  # red: held-out classes


def to_uint8_image(image, clip_normalised: bool = False) -> np.ndarray:
  """[H, W, 3] uint8 from uint8, float in [0, 1], or CLIP-normalised float."""
  img = np.asarray(image)
  if img.ndim != 3 or img.shape[-1] != 3:
    raise ValueError(f"image must be [H, W, 3], got {img.shape}")
  if img.dtype == np.uint8:
    return img
  img = img.astype(np.float32)
  if clip_normalised:
    img = img * np.asarray(CLIP_STD, np.float32) + np.asarray(CLIP_MEAN, np.float32)
  return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _save(img: Image.Image, path) -> None:
  with files.atomic_open(path, "wb") as f:
    img.save(f, format="PNG")


def draw_detections(
    image,
    boxes,
    labels: Sequence[Any],
    scores=None,
    *,
    valid=None,
    class_names: Sequence[str] | None = None,
    novel=None,
    novel_names: Iterable[str] = (),
    score_threshold: float = 0.0,
    upscale: int | None = None,
    clip_normalised: bool = False,
    line_width: int = 2,
    path: str | os.PathLike | None = None,
) -> np.ndarray:
  """Boxes with "name score" captions; novel classes in NOVEL_COLOR, base in BASE_COLOR.

  Args:
    image: [H, W, 3] uint8, float [0, 1], or CLIP-normalised (clip_normalised=True).
    boxes: [K, 4] x1y1x2y2 in image pixels. labels: [K] class indices (with class_names) or names.
    scores: [K] or None (ground truth). valid: [K] bool padding mask.
    novel: [K] bool; else a box is novel when its name is in `novel_names`.
    upscale: integer factor (nearest) before drawing; default makes the long side >= 256 px so
      small scenes stay legible.
  Returns:
    the drawn [H*upscale, W*upscale, 3] uint8 image (also written to `path` as PNG).
  """
  img = to_uint8_image(image, clip_normalised)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  k = boxes.shape[0]
  if len(labels) != k:
    raise ValueError(f"draw_detections: {len(labels)} labels for {k} boxes")
  names = [class_names[int(l)] if class_names is not None else str(l) for l in labels]
  keep = np.ones(k, bool) if valid is None else np.array(valid, bool).reshape(-1)  # a copy
  if scores is not None:
    scores = np.asarray(scores, np.float64).reshape(-1)
    keep &= scores >= score_threshold
  novel_set = set(novel_names)
  is_novel = (
      np.asarray(novel, bool).reshape(-1)
      if novel is not None
      else np.array([n in novel_set for n in names], bool)
  )
  if upscale is None:
    upscale = max(1, math.ceil(256 / max(img.shape[:2])))
  pil = Image.fromarray(img)
  if upscale > 1:
    pil = pil.resize((img.shape[1] * upscale, img.shape[0] * upscale), Image.NEAREST)
  draw = ImageDraw.Draw(pil)
  font = ImageFont.load_default()
  # Lowest score first so the most confident boxes end up on top.
  order = np.argsort(scores) if scores is not None else np.arange(k)
  for i in order:
    if not keep[i]:
      continue
    color = NOVEL_COLOR if is_novel[i] else BASE_COLOR
    x1, y1, x2, y2 = (boxes[i] * upscale).tolist()
    draw.rectangle([x1, y1, x2, y2], outline=color, width=line_width)
    text = names[i] if scores is None else f"{names[i]} {scores[i]:.2f}"
    tx, ty = x1, max(0.0, y1 - 12)
    l, t, r, b = draw.textbbox((tx, ty), text, font=font)
    draw.rectangle([l - 1, t - 1, r + 1, b + 1], fill=color)
    draw.text((tx, ty), text, fill=(255, 255, 255), font=font)
  if path is not None:
    _save(pil, path)
  return np.asarray(pil)


def _figure(figsize):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=figsize, dpi=100)
  FigureCanvasAgg(fig)
  return fig


def bar_chart(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    errors: Mapping[str, Sequence[float]] | None = None,
    *,
    ylabel: str = "",
    title: str = "",
    path: str | os.PathLike | None = None,
):
  """Grouped bars: one group per entry of `groups`, one bar per series, optional error bars.

  e.g. groups ("base", "novel", "all"), series {"teacher": [..], "student": [..]},
  errors the matching standard errors. Returns the matplotlib Figure.
  """
  n_series = len(series)
  for name, vals in series.items():
    if len(vals) != len(groups):
      raise ValueError(
          f"bar_chart: series {name!r} has {len(vals)} values for {len(groups)} groups"
      )
    if errors is not None and name in errors and len(errors[name]) != len(groups):
      raise ValueError(
          f"bar_chart: errors {name!r} has {len(errors[name])} values for " f"{len(groups)} groups"
      )
  fig = _figure((1.2 + 0.9 * len(groups) * max(n_series, 1) * 0.6, 3.6))
  ax = fig.add_subplot(1, 1, 1)
  x = np.arange(len(groups))
  width = 0.8 / max(n_series, 1)
  for j, (name, vals) in enumerate(series.items()):
    err = None if errors is None or name not in errors else np.asarray(errors[name], float)
    ax.bar(
        x + (j - (n_series - 1) / 2) * width,
        np.asarray(vals, float),
        width,
        yerr=err,
        capsize=3,
        label=name,
    )
  ax.set_xticks(x, list(groups))
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  if n_series > 1:
    ax.legend(fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  if path is not None:
    with files.atomic_open(path, "wb") as f:
      fig.savefig(f, format="png")
  return fig


def region_recognition_chart(
    results: Mapping[str, Mapping[str, float]],
    *,
    title: str = "",
    path: str | os.PathLike | None = None,
):
  """Bar chart of `region_top1` dicts per model (base / novel / all, +- one standard error)."""
  groups = ("base", "novel", "all")
  series = {m: [100 * r[g] for g in groups] for m, r in results.items()}
  errors = {m: [100 * r[f"se_{g}"] for g in groups] for m, r in results.items()}
  return bar_chart(groups, series, errors, ylabel="top-1 accuracy (%)", title=title, path=path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """One json object per line; blank lines skipped; a bad line is named in the error."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"metrics file not found: {path}")
  out = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if line.strip():
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{lineno}: not valid json ({e})") from None
  return out


def loss_curves(
    records: str | os.PathLike | Sequence[Mapping],
    keys: Sequence[str] | None = None,
    *,
    x_key: str = "step",
    log_y: bool = False,
    title: str = "",
    path: str | os.PathLike | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Plots metrics over steps from a jsonl file (or its records); one line per key.

  keys: default every numeric key whose name contains "loss". Records lacking a key (or x_key)
  are skipped for that key, so interleaved train / eval lines are fine.
  Returns {key: (x [n], y [n])} of what was plotted.
  """
  if isinstance(records, (str, os.PathLike)):
    records = read_jsonl(records)
  if keys is None:
    keys = sorted(
        {
            k
            for r in records
            for k, v in r.items()
            if "loss" in k and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
  curves = {}
  for key in keys:
    pts = [
        (float(r[x_key]), float(r[key]))
        for r in records
        if x_key in r and isinstance(r.get(key), (int, float))
    ]
    if not pts:
      raise ValueError(f"loss_curves: no record has both {x_key!r} and {key!r}")
    xs, ys = np.asarray(pts, np.float64).T
    curves[key] = (xs, ys)
  fig = _figure((6.0, 3.6))
  ax = fig.add_subplot(1, 1, 1)
  for key, (xs, ys) in curves.items():
    ax.plot(xs, ys, label=key, linewidth=1.2)
  if log_y:
    ax.set_yscale("log")
  ax.set_xlabel(x_key)
  ax.set_title(title)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  if path is not None:
    with files.atomic_open(path, "wb") as f:
      fig.savefig(f, format="png")
  return curves
