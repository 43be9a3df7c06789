"""Checks run before the first training step, so that a run that cannot finish says why in one
line instead of failing at its first checkpoint (minutes or hours in) or deep inside orbax.

`PreflightError` carries that line; `main` prints it as `error: ...` and exits with status 2.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np

PyTree = Any
# A checkpoint holds the state once; orbax writes the new step before deleting the oldest kept
# one, so two states' worth of bytes must fit at once, plus a margin for metadata and events.
_CHECKPOINT_COPIES = 2
_MARGIN_BYTES = 16 * 2**20


class PreflightError(RuntimeError):
  """A setting or the machine makes the run impossible; the message says which, in one line."""


def check_writable(directory: str) -> None:
  """`directory` (created if missing) accepts a new file; else PreflightError naming it."""
  try:
    os.makedirs(directory, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=directory)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise PreflightError(
        f"workdir {directory} is not writable ({e.strerror or e}); choose another with --workdir"
    ) from None


def state_bytes(state: PyTree) -> int:
  """Bytes of every array leaf of `state` (arrays or ShapeDtypeStructs)."""
  leaves = jax.tree_util.tree_leaves(state)
  return int(
      sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize for x in leaves)
  )


def check_free_space(directory: str, state: PyTree) -> None:
  """The disk under `directory` has room for the checkpoints of `state`; else PreflightError
  with the free and the needed MiB."""
  need = _CHECKPOINT_COPIES * state_bytes(state) + _MARGIN_BYTES
  free = shutil.disk_usage(directory).free
  if free < need:
    raise PreflightError(
        f"{directory}: {free / 2**20:.0f} MiB free on its disk, the checkpoints of this run need "
        f"~{need / 2**20:.0f} MiB; free space or choose another --workdir"
    )


def check_devices(num_devices: int, key: str = "sharding.num_devices") -> int:
  """-> the device count to use (0 = all); PreflightError naming `key` if more are asked for
  than this job has."""
  have = jax.device_count()
  if num_devices < 0 or num_devices > have:
    raise PreflightError(
        f"{key}={num_devices} but this job has {have} device(s) "
        f"({jax.default_backend()}); use 0 for all of them"
    )
  return num_devices or have
