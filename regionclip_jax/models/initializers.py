"""Host-side (numpy) random initialisation of Flax parameter trees.

Why: `module.init` compiles one threefry program per parameter, tens of seconds on CPU even for
the tiny towers, while the weights that matter usually come from a checkpoint. `numpy_init` draws
every leaf of a tree of shapes with one numpy generator, following a *rule*: a function of the
leaf's path and shape that returns `Normal(std)` or `Constant(value)`.

Two rules live here: `clip_rule` (OpenAI's init of the CLIP towers, used by `clip.init_params`)
and `generic_rule` (name-based, for any tree; used by the detection builders). The draw order is
part of what a seed means, so each caller keeps the order it has always used (see `numpy_init`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Normal:
  """N(0, std^2) entries."""

  std: float


@dataclasses.dataclass(frozen=True)
class Constant:
  """Every entry equal to `value`."""

  value: float


Rule = Callable[[tuple[str, ...], tuple[int, ...]], Normal | Constant]
ORDERS = ("sorted", "creation")


def numpy_init(shapes: PyTree, rule: Rule, seed: int = 0, *, order: str = "sorted") -> PyTree:
  """A tree of `jax.ShapeDtypeStruct` (e.g. from `jax.eval_shape`) -> same tree of jax arrays.

  `rule(path, shape)` picks each leaf's distribution; `path` is the tuple of dict keys from the
  root. Leaves keep the dtype of their shape struct. Normal leaves are drawn in float64 and
  rounded once to that dtype.

  `order` is the order leaves consume the generator: "sorted" (jax's tree order, keys sorted at
  every level; the detection builders' order) or "creation" (dict insertion order, i.e. the order
  Flax created the params; `clip.init_params`' order). Changing it changes every array of a seed.
  """
  if order not in ORDERS:
    raise ValueError(f"{__name__}: order must be one of {ORDERS}, got {order!r}")
  rng = np.random.default_rng(seed)

  def draw(path: tuple[str, ...], leaf) -> jax.Array:
    shape = tuple(leaf.shape)
    spec = rule(path, shape)
    if isinstance(spec, Constant):
      value = np.full(shape, spec.value)
    else:
      value = rng.standard_normal(shape) * spec.std
    return jnp.asarray(value, leaf.dtype)

  if order == "creation":
    flat = traverse_util.flatten_dict(shapes)
    return traverse_util.unflatten_dict({path: draw(path, leaf) for path, leaf in flat.items()})
  return jax.tree_util.tree_map_with_path(
      lambda keys, leaf: draw(tuple(getattr(k, "key", str(k)) for k in keys), leaf), shapes
  )


def _norm_or_bias(leaf: str) -> Constant | None:
  """Identity normalisation (scale / var ones, mean zeros) and zero biases, in every rule."""
  if leaf in ("scale", "var"):
    return Constant(1.0)
  if leaf in ("bias", "mean"):
    return Constant(0.0)
  return None


def clip_rule(config) -> Rule:
  """The CLIP modules' own distributions (`clip_model.CLIP`, a `CLIPConfig`): OpenAI's init for
  the transformers and attnpool, He fan-out for convs, identity frozen BN.

  Raises ValueError for a parameter no rule covers, so a new module cannot silently get a wrong
  init.
  """

  def rule(path: tuple[str, ...], shape: tuple[int, ...]) -> Normal | Constant:
    leaf, parent = path[-1], (path[-2] if len(path) > 1 else "")
    if leaf == "logit_scale":
      return Constant(math.log(1 / 0.07))
    fixed = _norm_or_bias(leaf)
    if fixed is not None:
      return fixed
    if leaf == "embedding":
      return Normal(0.02)
    if path == ("positional_embedding",):
      return Normal(0.01)
    if leaf == "text_projection":
      return Normal(config.text.width**-0.5)
    if leaf in ("class_embedding", "positional_embedding", "proj"):  # ViT raw params, attnpool
      return Normal(shape[-1] ** -0.5 if leaf != "proj" else shape[0] ** -0.5)
    if leaf == "kernel" and len(shape) == 4:  # He fan-out, as layers.conv_init
      return Normal((2.0 / (shape[0] * shape[1] * shape[3])) ** 0.5)
    if leaf == "kernel":
      if parent in ("q_proj", "k_proj", "v_proj", "c_proj") and "attnpool" in path:
        return Normal(shape[0] ** -0.5)
      layers = config.vision.layers if path[0] == "visual" else config.text.layers
      if parent == "in_proj":
        return Normal(shape[0] ** -0.5)
      if parent == "c_fc":
        return Normal((2 * shape[0]) ** -0.5)
      if parent in ("out_proj", "c_proj"):
        return Normal(shape[1] ** -0.5 * (2 * layers) ** -0.5)
    raise ValueError(f"clip.init_params: no initializer rule for param {'/'.join(path)} {shape}")

  return rule


def generic_rule(head_std: dict[str, float] | None = None) -> Rule:
  """Name-based rule for any tree: conv kernels He-normal (fan-out, as the CLIP ResNet), dense
  kernels fan-in normal, `scale` / `var` ones, `bias` / `mean` zeros, `positional_embedding`
  N(0, 1 / width), other arrays N(0, 0.02).

  `head_std` maps a top-level module name (below an optional 'params' root) to the std of all
  its kernels, e.g. {"bbox_pred": 0.001}; their biases stay zero.
  """
  head_std = dict(head_std or {})

  def rule(path: tuple[str, ...], shape: tuple[int, ...]) -> Normal | Constant:
    name = path[-1]
    top = path[1] if len(path) > 1 and path[0] == "params" else path[0]
    fixed = _norm_or_bias(name)
    if fixed is not None:
      return fixed
    if top in head_std and name == "kernel":
      return Normal(head_std[top])
    if name == "kernel" and len(shape) == 4:
      return Normal(math.sqrt(2.0 / (shape[0] * shape[1] * shape[3])))
    if name == "kernel" and len(shape) >= 2:
      return Normal(shape[0] ** -0.5)
    if name == "positional_embedding":
      return Normal(shape[-1] ** -0.5)
    return Normal(0.02)

  return rule
