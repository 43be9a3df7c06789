"""The shape concepts of the shapes world as implicit masks.

Each mask maps local coordinates (u, v) in [-1, 1]^2 (v points down), arrays of any one shape,
to a boolean array of that shape: True inside the shape. Evaluated on a whole pixel grid with
numpy, so drawing needs no rasteriser.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _regular_polygon(n: int, phase: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
  angles = phase + 2 * np.pi * np.arange(n) / n
  normals = np.stack([np.cos(angles + np.pi / n), np.sin(angles + np.pi / n)], -1)
  apothem = np.cos(np.pi / n)

  def mask(u, v):
    proj = u[..., None] * normals[:, 0] + v[..., None] * normals[:, 1]
    return np.all(proj <= apothem, axis=-1)

  return mask


def _star(u, v, points=5, inner=0.45):
  theta = np.arctan2(v, u) + np.pi / 2  # an outer point straight up
  r = np.hypot(u, v)
  sector = 2 * np.pi / points
  gamma = np.abs(np.mod(theta, sector) - sector / 2)  # 0 at the inner vertex
  gamma = sector / 2 - gamma  # angle measured from the outer vertex
  p0 = np.array([1.0, 0.0])
  p1 = inner * np.array([np.cos(sector / 2), np.sin(sector / 2)])
  d = p1 - p0
  n = np.array([-d[1], d[0]])
  edge_r = (n @ p0) / (n[0] * np.cos(gamma) + n[1] * np.sin(gamma))
  return r <= edge_r


def _heart(u, v):
  x, y = 1.25 * u, -1.25 * v + 0.2
  return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0


def _arrow(u, v):
  shaft = (np.abs(v) <= 0.22) & (u >= -0.95) & (u <= 0.1)
  head = (u >= 0.05) & (u <= 0.95) & (np.abs(v) <= 0.85 * (0.95 - u))
  return shaft | head


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u * u + v * v <= 0.95,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    "triangle": _regular_polygon(3, -np.pi / 2),
    "star": _star,
    "cross": lambda u, v: ((np.abs(u) <= 0.28) & (np.abs(v) <= 0.95))
    | ((np.abs(v) <= 0.28) & (np.abs(u) <= 0.95)),
    "ring": lambda u, v: (u * u + v * v <= 0.95) & (u * u + v * v >= 0.35),
    "hexagon": _regular_polygon(6, 0.0),
    "heart": _heart,
    "arrow": _arrow,
    "crescent": lambda u, v: (u * u + v * v <= 0.95) & ((u - 0.45) ** 2 + v * v >= 0.55),
    "diamond": lambda u, v: np.abs(u) / 0.6 + np.abs(v) <= 0.95,
    "pentagon": _regular_polygon(5, -np.pi / 2),
    "ellipse": lambda u, v: u * u + (v / 0.5) ** 2 <= 0.95,
    "semicircle": lambda u, v: (u * u + (v - 0.45) ** 2 <= 0.9) & (v <= 0.45),
    "trapezoid": lambda u, v: (np.abs(v) <= 0.55) & (np.abs(u) <= 0.55 + 0.4 * (v + 0.55) / 1.1),
    "frame": lambda u, v: (np.maximum(np.abs(u), np.abs(v)) <= 0.85)
    & (np.maximum(np.abs(u), np.abs(v)) >= 0.5),
    "chevron": lambda u, v: (np.abs(u) <= 0.9)
    & (v >= 0.75 * np.abs(u) - 0.6)
    & (v <= 0.75 * np.abs(u) - 0.05),
    "hourglass": lambda u, v: (np.abs(v) <= 0.85) & (np.abs(u) <= 0.8 * np.abs(v) + 0.12),
}
# Shapes that turn freely: those that look the same at any angle. The others turn at most
# `max_rotation_deg`, so that a square never becomes a diamond, and so that star, cross and arrow
# keep one orientation: turning freely, the 64 px teacher could not tell them apart (their text
# embeddings converged to cosine 0.95-0.99; docs/findings.md, "Why the text tower makes twins").
FREE_ROTATION = frozenset({"circle", "ring", "ellipse"})
