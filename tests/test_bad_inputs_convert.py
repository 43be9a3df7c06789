"""tools.convert over corrupted checkpoints: one line naming the file (and the key), exit status
2, nothing written; an interrupted write leaves no directory that reads as converted."""

import contextlib
import io
import os
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st

import test_checkpoints_util as u
from regionclip_jax.models import checkpoints as ck
from regionclip_jax.models.checkpoints import converted
from regionclip_jax.tools import convert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = u.torch_clip("rn", seed=5)
SD = MODEL.state_dict()
FLOAT_KEYS = sorted(k for k, v in SD.items() if v.is_floating_point())
# a key is named as the file has it, or as the converted parameter ('/'-joined Flax path)
KEY = re.compile(r"'[\w.]+'|parameter [\w/]+ holds|key '[\w.]+'")


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory):
  d = tmp_path_factory.mktemp("good")
  plain = u.save_openai_state_dict(MODEL, str(d / "rn.pt"))
  archive = u.save_openai_torchscript(MODEL, str(d / "RN.pt"))
  return {"plain": open(plain, "rb").read(), "archive": open(archive, "rb").read()}


def _run(argv):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = convert.main(argv)
  return rc, err.getvalue().strip()


def _tensor_edit(key, op):
  sd = dict(SD)
  if op == "delete":
    del sd[key]
  elif op == "shape":
    t = SD[key]
    sd[key] = torch.zeros(*[n + 1 for n in t.shape]) if t.ndim else torch.zeros(2)
  else:
    t = SD[key].clone().reshape(-1)
    t[len(t) // 2] = float(op)
    sd[key] = t.reshape(SD[key].shape)
  return sd


FILE_OPS = st.one_of(
    st.tuples(st.just("empty"), st.just(0)),
    st.tuples(st.sampled_from(["truncate", "flip"]), st.floats(0.0, 0.999)),
    st.tuples(st.just("garbage"), st.binary(max_size=300)),
    st.tuples(st.just("text"), st.text(max_size=200)),
)
TENSOR_OPS = st.tuples(
    st.sampled_from(["delete", "shape", "nan", "inf"]), st.sampled_from(FLOAT_KEYS)
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.sampled_from(["plain", "archive"]), FILE_OPS | TENSOR_OPS)
@example("plain", ("shape", "logit_scale"))
@example("plain", ("shape", "visual.attnpool.positional_embedding"))  # read to infer the config
def test_corrupt_checkpoint_is_one_line_and_writes_nothing(tmp_path_factory, good_bytes, kind, op):
  d = tmp_path_factory.mktemp("c")
  src, out = str(d / "in.pt"), str(d / "out")
  name, arg = op
  data = good_bytes[kind]
  if name == "empty":
    data = b""
  elif name == "truncate":
    data = data[: int(arg * len(data))]
  elif name == "flip":  # a flipped byte: the archive's checks catch it, or weights change
    i = int(arg * len(data))
    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
  elif name in ("garbage", "text"):
    data = arg if isinstance(arg, bytes) else arg.encode("utf-8")
  if name in ("delete", "shape", "nan", "inf"):
    torch.save(_tensor_edit(arg, name), src)
  else:
    with open(src, "wb") as f:
      f.write(data)
  rc, err = _run([f"--input={src}", f"--output={out}"])
  must_fail = name not in ("flip",)
  if rc == 0:
    assert not must_fail, (op, err)
    ck.read_converted(out)  # a complete, readable conversion
    return
  assert rc == 2 and err.count("\n") == 0 and err.startswith("convert: error: ") and src in err
  assert not os.path.exists(out), os.listdir(out)
  if name in ("nan", "inf"):
    assert re.search(r"parameter [\w/]+ holds 1 non-finite", err), err
  elif name in ("delete", "shape"):
    assert KEY.search(err), err


def test_failed_rewrite_leaves_no_marker(tmp_path, good_bytes, monkeypatch):
  src, out = tmp_path / "rn.pt", str(tmp_path / "out")
  src.write_bytes(good_bytes["plain"])
  assert _run([f"--input={src}", f"--output={out}"])[0] == 0
  before = open(os.path.join(out, ck.PARAMS_NAME), "rb").read()
  # an earlier conversion stays intact when the input is bad: nothing is written before the check
  bad = tmp_path / "bad.pt"
  bad.write_bytes(good_bytes["plain"][:1000])
  assert _run([f"--input={bad}", f"--output={out}"])[0] == 2
  ck.read_converted(out)

  def disk_full(flat, path, metadata=None):
    with open(path, "wb") as f:
      f.write(b"\0" * 100)  # part of the file, then the disk is full
    raise OSError(28, "No space left on device", path)

  monkeypatch.setattr(converted, "save_file", disk_full)
  rc, err = _run([f"--input={src}", f"--output={out}"])
  assert rc == 2 and "No space left on device" in err and err.count("\n") == 0
  assert sorted(os.listdir(out)) == [ck.PARAMS_NAME]  # the old params, whole; no marker
  assert open(os.path.join(out, ck.PARAMS_NAME), "rb").read() == before
  with pytest.raises(ck.CheckpointError):
    ck.read_converted(out)


def test_cli_truncated_file_no_traceback_and_help_says_strict(tmp_path, good_bytes):
  src = tmp_path / "cut.pt"
  src.write_bytes(good_bytes["archive"][: len(good_bytes["archive"]) // 2])
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "regionclip_jax.tools.convert"]
  r = subprocess.run(
      cmd + [f"--input={src}", f"--output={tmp_path / 'o'}"],
      capture_output=True,
      text=True,
      env=env,
      timeout=120,
  )
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and str(src) in r.stderr
  assert not (tmp_path / "o").exists()
  h = subprocess.run(cmd + ["--help"], capture_output=True, text=True, env=env, timeout=120)
  assert h.returncode == 0 and "strict; there is no skip mode" in " ".join(h.stdout.split())
