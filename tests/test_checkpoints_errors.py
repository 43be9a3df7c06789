"""Bad checkpoints get one-line errors that name the file / key / shapes; unsafe pickles are refused."""

import dataclasses
import os
import pickle
import sys

import numpy as np
import pytest
import torch

import test_checkpoints_util as u
from regionclip_jax.models import checkpoints as ck
from regionclip_jax.models import clip


def _raises(fn, *patterns):
  with pytest.raises(ck.CheckpointError) as info:
    fn()
  msg = str(info.value)
  print("\n" + msg)
  assert "\n" not in msg, msg
  for p in patterns:
    assert p in msg, (p, msg)
  return msg


@pytest.fixture(scope="module")
def rn_file(tmp_path_factory):
  return u.save_openai_state_dict(u.torch_clip("rn"), str(tmp_path_factory.mktemp("rn") / "rn.pt"))


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
  return u.save_openai_state_dict(
      u.torch_clip("vit"), str(tmp_path_factory.mktemp("vit") / "vit.pt")
  )


class _Payload:
  """Unpickling this writes a marker file: what a malicious checkpoint would do."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
  marker = tmp_path / "marker_refused"
  path = str(tmp_path / "evil.pth")
  torch.save({"model": {"backbone.conv1.weight": torch.zeros(1)}, "x": _Payload(str(marker))}, path)
  _raises(lambda: ck.read_state_dict(path), path, "refused to unpickle", "weights_only=True")
  _raises(lambda: ck.load(path), "refused to unpickle")
  assert not marker.exists()
  # control: the same kind of file does run its payload under a plain unpickler
  control = tmp_path / "marker_control"
  cpath = str(tmp_path / "evil_control.pth")
  torch.save({"x": _Payload(str(control))}, cpath)
  torch.load(cpath, weights_only=False)
  assert control.exists()


def test_legacy_and_raw_pickles_that_run_code_are_refused(tmp_path):
  marker = tmp_path / "marker_legacy"
  legacy = str(tmp_path / "legacy.pt")  # torch's pre-1.6 (non-zip) serialization
  torch.save({"w": _Payload(str(marker))}, legacy, _use_new_zipfile_serialization=False)
  _raises(lambda: ck.read_state_dict(legacy, source="openai"), legacy, "refused to unpickle")
  raw = str(tmp_path / "raw.pt")  # a bare pickle.dump
  with open(raw, "wb") as f:
    pickle.dump({"w": _Payload(str(marker))}, f, protocol=2)
  _raises(lambda: ck.read_state_dict(raw, source="openai"), raw, "weights_only=True")
  assert not marker.exists()


def test_truncated_and_garbage_files(tmp_path, rn_file):
  with open(rn_file, "rb") as f:
    data = f.read()
  cut = tmp_path / "cut.pt"
  cut.write_bytes(data[: len(data) // 2])
  _raises(lambda: ck.load(str(cut)), str(cut), "unreadable or truncated")
  junk = tmp_path / "junk.pth"
  junk.write_bytes(os.urandom(1000))
  _raises(lambda: ck.read_state_dict(str(junk)), str(junk))
  hub = u.save_open_clip_hub(u.torch_clip("rn"), str(tmp_path / "hub"))
  st = os.path.join(hub, "open_clip_model.safetensors")
  with open(st, "rb") as f:
    st_data = f.read()
  with open(st, "wb") as f:
    f.write(st_data[: len(st_data) - 1000])
  _raises(lambda: ck.read_state_dict(hub), st, "truncated")
  _raises(lambda: ck.load(str(tmp_path / "nope.pt")), "checkpoint not found", "nope.pt")
  os.makedirs(tmp_path / "empty")
  _raises(lambda: ck.load(str(tmp_path / "empty")), "directory holds no known checkpoint")
  _raises(lambda: ck.load(rn_file, source="tensorflow"), "unknown source 'tensorflow'")


def test_vit_checkpoint_loaded_as_resnet(vit_file):
  _raises(lambda: ck.load(vit_file, arch="resnet"), vit_file, "holds a vit CLIP", "arch='resnet'")
  _raises(
      lambda: ck.load(vit_file, config=clip.PRESETS["tiny_rn"]),
      "holds a vit CLIP",
      "given config is a resnet",
  )


def test_config_mismatch_names_parameter_and_shapes(rn_file):
  ck.load(rn_file, config=clip.PRESETS["tiny_rn"])  # the fixture is exactly the tiny preset
  wrong = dataclasses.replace(clip.PRESETS["tiny_rn"], embed_dim=32)
  msg = _raises(lambda: ck.load(rn_file, config=wrong), rn_file)
  assert "(64, 64)" in msg and "(64, 32)" in msg


def test_missing_key_is_named(tmp_path):
  sd = u.torch_clip("rn").state_dict()
  del sd["ln_final.bias"]
  path = str(tmp_path / "missing.pt")
  torch.save(sd, path)
  _raises(lambda: ck.load(path), path, "missing key 'ln_final.bias'")


def test_without_torch_pt_files_name_the_extra_but_safetensors_still_read(
    tmp_path, rn_file, monkeypatch
):
  hub = u.save_open_clip_hub(u.torch_clip("rn"), str(tmp_path / "hub"))
  archive = u.save_openai_torchscript(u.torch_clip("rn"), str(tmp_path / "RN.pt"))
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  _raises(
      lambda: ck.read_state_dict(rn_file),
      rn_file,
      "needs PyTorch",
      "pip install regionclip_jax[torch]",
  )
  sd, source = ck.read_state_dict(hub)  # safetensors needs no torch
  assert source == "open_clip" and sd["visual.conv1.weight"].shape == (8, 3, 3, 3)
  sd, source = ck.read_state_dict(archive)  # OpenAI's TorchScript archives neither
  assert source == "openai" and sd["visual.conv1.weight"].shape == (8, 3, 3, 3)


def test_converted_directory_errors(tmp_path):
  cfg = clip.PRESETS["tiny_rn"]
  params = clip.params_from_state_dict(u.numpy_sd(u.torch_clip("rn")), cfg)  # no jit compile
  out = ck.save_converted(str(tmp_path / "conv"), cfg, params)
  other = dataclasses.replace(cfg, embed_dim=32)
  ck.save_converted(str(tmp_path / "bad"), other, params)  # params do not fit the config
  _raises(lambda: ck.load(str(tmp_path / "bad")), "params.safetensors", "text_projection")
  _raises(lambda: ck.load(out, arch="vit"), "holds a resnet CLIP")
  with open(os.path.join(out, "config.json"), "w") as f:
    f.write('{"format": "something else"}')
  _raises(lambda: ck.load(out), "not a regionclip_jax converted checkpoint")
  assert np.isfinite(np.asarray(params["logit_scale"]))


def test_torchscript_archive_with_code_is_refused(tmp_path):
  """A zip laid out as a TorchScript archive whose data.pkl calls exec: refused, never run."""
  import zipfile

  marker = tmp_path / "marker_ts"
  path = str(tmp_path / "evil_ts.pt")
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"w": _Payload(str(marker))}, protocol=2))
    z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
    z.writestr("archive/version", "3\n")
  _raises(lambda: ck.load(path), path, "refused to unpickle", "exec")
  assert not marker.exists()
  ok = u.save_openai_torchscript(u.torch_clip("rn"), str(tmp_path / "ok.pt"))
  with open(ok, "rb") as f:
    data = f.read()
  cut = tmp_path / "cut_ts.pt"
  cut.write_bytes(data[: len(data) // 2])
  _raises(lambda: ck.load(str(cut)), str(cut))


def _tensor_archive(path, size, stride, numel=4):
  """A TorchScript-style zip whose data.pkl rebuilds one float tensor of the given layout from a
  storage of `numel` floats (written the way torch writes them: persistent ids + rebuild)."""
  import io
  import zipfile

  storage = object()

  class Tensor:

    def __reduce__(self):
      return (torch._utils._rebuild_tensor_v2, (storage, 0, size, stride, False, {}))

  class P(pickle.Pickler):

    def persistent_id(self, obj):
      return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is storage else None

  buf = io.BytesIO()
  P(buf, protocol=2).dump({"w": Tensor()})
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
    z.writestr("archive/data/0", np.arange(numel, dtype=np.float32).tobytes())
  return path


def test_torchscript_tensor_layout_is_bounds_checked(tmp_path):
  ok = _tensor_archive(str(tmp_path / "ok.pt"), (2, 2), (1, 2))
  np.testing.assert_array_equal(ck.read_torchscript_archive(ok)["w"], [[0, 2], [1, 3]])
  bad = _tensor_archive(str(tmp_path / "oob.pt"), (1000,), (1,))  # would read past the storage
  _raises(lambda: ck.read_torchscript_archive(bad), bad, "reads past its storage")
  neg = _tensor_archive(str(tmp_path / "neg.pt"), (2,), (-1,))
  _raises(lambda: ck.read_torchscript_archive(neg), neg, "invalid tensor layout")
