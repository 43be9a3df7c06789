"""Orbax checkpoints holding the train state and the data-iterator state together."""

from __future__ import annotations

import base64
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


def _encode_iter_state(s):
  if isinstance(s, (bytes, bytearray)):
    return {"__bytes_b64__": base64.b64encode(bytes(s)).decode("ascii")}
  return s


def _decode_iter_state(s):
  if isinstance(s, dict) and "__bytes_b64__" in s:
    return base64.b64decode(s["__bytes_b64__"])
  return s


class Checkpointer:
  """`CheckpointManager` (async, keep N) over `<directory>/<step>/{state,data}`.

  The state is any pytree (TrainState); the data item is the JSON-able iterator state from
  grain's `get_state()` (bytes are base64-wrapped). Only committed steps are ever restored, so a
  process killed mid-save resumes from the previous complete checkpoint.
  """

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(self.directory, options=opts, item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: PyTree, iter_state: Any = None) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    items["data"] = ocp.args.JsonSave({"iterator": _encode_iter_state(iter_state)})
    self.manager.save(step, args=ocp.args.Composite(**items))

  def restore(self, abstract_state: PyTree, step: int | None = None):
    """-> (state, iterator_state) at `step` (default latest), or (None, None) if none exists.

    `abstract_state`: a pytree of arrays or ShapeDtypeStructs with shardings (the restored
    arrays are laid out like it)."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = self.manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
        ),
    )
    return out["state"], _decode_iter_state(out["data"]["iterator"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
