"""Atomic outputs: a failed or killed write leaves the previous file (or none), never a partial
one, and no temporary file that a reader could mistake for output."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from regionclip_jax import files


def test_complete_write_replaces_the_previous_file(tmp_path):
  path = tmp_path / "sub" / "metrics.json"
  files.write_json(path, {"a": 1.0})
  files.write_json(path, {"a": 2.0, "b": float("nan"), "c": np.float32(0.5), "d": np.int64(3)})
  assert json.loads(path.read_text()) == {"a": 2.0, "b": None, "c": 0.5, "d": 3}
  assert os.listdir(path.parent) == ["metrics.json"]
  assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_error_inside_the_block_keeps_the_previous_file(tmp_path):
  path = tmp_path / "table.md"
  files.write_text(path, "old\n")
  with pytest.raises(RuntimeError):
    with files.atomic_open(path) as f:
      f.write("half of the new")
      raise RuntimeError("disk on fire")
  assert path.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["table.md"]


def test_save_npy_round_trip_and_no_pickles(tmp_path):
  x = np.arange(12, dtype=np.float32).reshape(3, 4)
  files.save_npy(tmp_path / "e.npy", x)
  np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), x)
  with pytest.raises(ValueError):
    files.save_npy(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
  assert not (tmp_path / "o.npy").exists()


def test_bad_mode_is_refused(tmp_path):
  with pytest.raises(ValueError, match="mode"):
    with files.atomic_open(tmp_path / "x", "a"):
      pass


_WRITER = """
import os, signal, sys
from regionclip_jax import files
with files.atomic_open(sys.argv[1]) as f:
  f.write("x" * 100000)
  f.flush()
  os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_mid_write_leaves_the_previous_file(tmp_path):
  path = tmp_path / "detections.json"
  files.write_text(path, "[]")
  res = subprocess.run([sys.executable, "-c", _WRITER, str(path)], capture_output=True)
  assert res.returncode == -signal.SIGKILL
  assert path.read_text() == "[]"
  # the killed writer's temporary file stays, under a hidden name that no reader looks for
  leftovers = [n for n in os.listdir(tmp_path) if n != "detections.json"]
  assert all(n.startswith(".detections.json.") and n.endswith(".tmp") for n in leftovers)


def test_a_failed_export_rewrite_leaves_no_export(tmp_path, monkeypatch):
  """New weights must never sit under an earlier export's model.json."""
  from regionclip_jax.detection import export

  d = str(tmp_path / "export")
  variables = {"params": {"w": np.ones((2, 2), np.float32)}}
  export.export_model(d, variables, {"kind": "rpn"}, arrays={"class_embeddings": np.eye(2)})
  assert export.is_export(d) and np.load(os.path.join(d, "class_embeddings.npy")).shape == (2, 2)

  def broken(path, data):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(files, "write_bytes", broken)
  with pytest.raises(OSError):
    export.export_model(d, {"params": {"w": np.zeros((3, 3), np.float32)}}, {"kind": "rpn"})
  assert not export.is_export(d)
