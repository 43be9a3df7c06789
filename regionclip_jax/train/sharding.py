"""Device mesh, batch sharding and parameter-sharding rules (data parallel, optional FSDP)."""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from regionclip_jax.train.preflight import check_devices

PyTree = Any
DATA = "data"


def make_mesh(num_devices: int | None = None, key: str = "sharding.num_devices") -> Mesh:
  """1-D mesh over the first `num_devices` (global) devices (None / 0: all), axis `data`;
  PreflightError in one line, naming the config `key`, if more are asked for than exist.

  Auto axis types: with jax >= 0.10's default Explicit axes, a global contrastive `a @ b.T`
  between two batch-sharded arrays is a sharding type error; Auto lets XLA insert the gather.
  """
  n = check_devices(num_devices or 0, key)
  devices = jax.devices()[:n]
  return jax.make_mesh((n,), (DATA,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`."""
  return NamedSharding(mesh, P(DATA))


def fsdp_spec(shape: Sequence[int], num_shards: int, min_size: int) -> P:
  """Shard the largest axis divisible by num_shards; replicate small or indivisible arrays."""
  if int(np.prod(shape, dtype=np.int64)) < min_size or num_shards == 1:
    return P()
  for ax in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[ax] % num_shards == 0:
      spec = [None] * len(shape)
      spec[ax] = DATA
      return P(*spec)
  return P()


def param_shardings(
    params: PyTree,
    mesh: Mesh,
    mode: str = "replicate",
    min_size: int = 2**16,
    rules: Sequence[tuple[str, P]] = (),
) -> PyTree:
  """Tree of NamedSharding for `params` (arrays or ShapeDtypeStructs).

  mode: "replicate" (data parallel) or "fsdp" (ZeRO-3-style: each large tensor split over
  `data` on its largest divisible axis; XLA all-gathers it where used). `rules` are
  (path regex, PartitionSpec) pairs checked first, for hand placement.
  """
  if mode not in ("replicate", "fsdp"):
    raise ValueError(f"sharding.mode must be 'replicate' or 'fsdp', got {mode!r}")
  n = mesh.shape[DATA]
  flat = traverse_util.flatten_dict(
      params.unfreeze() if hasattr(params, "unfreeze") else params, sep="/"
  )
  out = {}
  for path, x in flat.items():
    spec = None
    for pat, s in rules:
      if re.search(pat, path):
        spec = s
        break
    if spec is None:
      spec = fsdp_spec(x.shape, n, min_size) if mode == "fsdp" else P()
    out[path] = NamedSharding(mesh, spec)
  return traverse_util.unflatten_dict(out, sep="/")


def tree_shardings_like(
    tree: PyTree, param_tree_shardings: PyTree, params: PyTree, mesh: Mesh
) -> PyTree:
  """Shardings for a tree (e.g. optimiser state) whose array leaves mirror `params` by shape:
  leaves with a parameter's shape at the same path suffix reuse its sharding, others replicate."""
  flat_p = traverse_util.flatten_dict(params, sep="/")
  flat_s = traverse_util.flatten_dict(param_tree_shardings, sep="/")
  by_path = {k: (flat_p[k].shape, flat_s[k]) for k in flat_p}

  def pick(path, leaf):
    keys = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    for pk, (shape, s) in by_path.items():
      if keys.endswith(pk) and getattr(leaf, "shape", None) == shape:
        return s
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(pick, tree)


def global_batch(local: PyTree, mesh: Mesh) -> PyTree:
  """Assemble per-process numpy batches into global arrays sharded over `data`.

  Every process passes its own shard (leading axis = global batch / process count)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local
  )


def state_shardings(state, mesh: Mesh, mode: str = "replicate", min_size: int = 2**16):
  """Shardings for a TrainState: params by `param_shardings`, optimiser state mirroring them,
  the step replicated."""
  ps = param_shardings(state.params, mesh, mode, min_size)
  os_ = tree_shardings_like(state.opt_state, ps, state.params, mesh)
  return state.replace(step=replicated(mesh), params=ps, opt_state=os_)


def jit_step(
    step,
    mesh: Mesh,
    state,
    *,
    mode: str = "replicate",
    min_size: int = 2**16,
    donate: bool = True,
    frozen=None,
):
  """jax.jit a `step(state, batch, frozen) -> (state, metrics)` over `mesh`.

  The batch is split over `data`, `frozen` (teacher params, concept embeddings) replicated or
  FSDP-sharded like params, the state donated. Returns (jitted_fn, placed_state, placed_frozen);
  call it as `jitted_fn(state, batch, frozen)` with batches from `global_batch`.
  """
  st_sh = state_shardings(state, mesh, mode, min_size)
  fr_sh = None
  if frozen is not None:
    fr_sh = {
        k: (param_shardings(v, mesh, mode, min_size) if isinstance(v, dict) else replicated(mesh))
        for k, v in frozen.items()
    }
    frozen = jax.device_put(frozen, fr_sh)
  state = jax.device_put(state, st_sh)
  fn = jax.jit(
      step,
      in_shardings=(st_sh, batch_sharding(mesh), fr_sh),
      out_shardings=(st_sh, replicated(mesh)),
      donate_argnums=(0,) if donate else (),
  )
  return fn, state, frozen
