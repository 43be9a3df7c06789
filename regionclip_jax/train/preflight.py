"""Checks run before the first training step, so that a run that cannot finish says why in one
line instead of failing at its first checkpoint (minutes or hours in) or deep inside orbax.

`PreflightError` carries that line; `main` prints it as `error: ...` and exits with status 2.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

import jax
import numpy as np

PyTree = Any
# "gs://bucket/x", "s3://...", "memory://...": a scheme before "://" (a Windows drive is not one)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
# A checkpoint holds the state once; orbax writes the new step before deleting the oldest kept
# one, so two states' worth of bytes must fit at once, plus a margin for metadata and events.
_CHECKPOINT_COPIES = 2
_MARGIN_BYTES = 16 * 2**20


class PreflightError(RuntimeError):
  """A setting or the machine makes the run impossible; the message says which, in one line."""


def check_local_paths(config, workdir: str | None = None) -> None:
  """Every path is a local (or mounted) file path: a URL such as gs://bucket/run in the workdir or
  in any string setting -> PreflightError naming the key. Without this check `os.makedirs` turns
  `gs://b/run` into a local folder `./gs:` and the run fails deep inside orbax."""
  found = []
  if workdir and _URL.match(workdir):
    found.append(("--workdir", workdir))

  def walk(node, prefix):
    for key, value in node.items():
      name = f"{prefix}{key}"
      if hasattr(value, "items"):
        walk(value, name + ".")
      elif isinstance(value, str) and _URL.match(value):
        found.append((f"config.{name}", value))
      elif isinstance(value, (list, tuple)):
        found.extend((f"config.{name}", v) for v in value if isinstance(v, str) and _URL.match(v))

  if config is not None:
    walk(config, "")
  if found:
    key, value = found[0]
    raise PreflightError(
        f"{key}={value}: URLs are not supported, paths are local or mounted file paths (e.g. a "
        f"bucket mounted with gcsfuse); {len(found)} such setting(s) in all"
    )


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
