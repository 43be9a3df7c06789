"""Atomic output files: written under a temporary name in the same folder, flushed to disk, then
renamed over the final name (`os.replace`, atomic on POSIX). A kill at any point leaves either the
previous file or the complete new one, never a file that looks complete but is not; the stages
decide what is done by which files exist, so a half-written one would be taken as finished work.

Multi-file outputs (exports, converted checkpoints) write each file this way and their marker file
(the one a reader checks first, e.g. `model.json`) last.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import IO, Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
  """`open(path, mode)` whose content appears at `path` only when the block exits without error.

  The parent folder is created. On an exception the temporary file is removed and `path` keeps
  what it had before. `mode` is "w" or "wb" (plus open()'s keywords, e.g. encoding)."""
  if mode not in ("w", "wb"):
    raise ValueError(f"{__name__}.atomic_open: mode must be 'w' or 'wb', got {mode!r}")
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """A temporary path beside `path` for writers that take a path, not a file object (e.g.
  ArrayRecordWriter); renamed to `path` (after an fsync) when the block exits without error,
  removed on an exception. The writer must have closed the file by the end of the block."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def _strict(x: Any) -> Any:
  """numpy scalars -> Python; non-finite floats -> None (json has no NaN / Infinity)."""
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    x = x.item()
  if isinstance(x, float) and not np.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _strict(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_strict(v) for v in x]
  return x


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
  """Atomically write `obj` as strict json (NaN / inf written as null, numpy scalars as numbers)."""
  with atomic_open(path, "w", encoding="utf-8") as f:
    json.dump(_strict(obj), f, indent=indent)


def write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_open(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  with atomic_open(path, "wb") as f:
    f.write(data)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
  """Atomic `np.save` (no pickled objects: `allow_pickle=False`)."""
  with atomic_open(path, "wb") as f:
    np.save(f, np.asarray(array), allow_pickle=False)
