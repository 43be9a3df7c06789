"""The RegionCLIP step under jit + NamedSharding: 1 device == 8 simulated devices (data parallel
and FSDP) == 2 processes x 4 devices through jax.distributed, within 1e-5 relative."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

JOB = textwrap.dedent("""
  import os, sys
  import numpy as np
  mode, out = sys.argv[1], sys.argv[2]
  import jax
  if mode == "multiprocess":
    pid = int(sys.argv[3])
    jax.distributed.initialize(coordinator_address="localhost:" + sys.argv[4], num_processes=2,
                               process_id=pid, local_device_ids=list(range(4)))
  import jax.numpy as jnp
  from regionclip_jax.models import clip as clip_lib
  from regionclip_jax.pretrain.proposals import make_proposal_fn
  from regionclip_jax.pretrain.step import LossConfig, make_pretrain_step
  from regionclip_jax.train import optimizer as opt
  from regionclip_jax.train.sharding import global_batch, jit_step, make_mesh
  from regionclip_jax.train.state import create_train_state

  cfg = clip_lib.CLIPConfig(16, clip_lib.ResNetConfig((1, 1, 1, 1), 8, 2, 32),
                            clip_lib.TextConfig(context_length=8, vocab_size=64, width=16, heads=1, layers=1))
  params = jax.tree.map(np.asarray, clip_lib.init_params(cfg, seed=0))
  teacher = jax.tree.map(np.asarray, clip_lib.init_params(cfg, seed=1))
  model = clip_lib.CLIP(cfg)
  rng = np.random.default_rng(0)
  B = 8
  batch = {"image": rng.normal(size=(B, 32, 32, 3)).astype(np.float32),
           "image_size": np.full((B, 2), 32, np.int32),
           "boxes": np.tile(np.array([[2., 2., 20., 20.], [10., 4., 30., 28.]], np.float32), (B, 1, 1)),
           "box_mask": np.tile(np.array([True, False]), (B, 1)),
           "caption_tokens": np.concatenate([rng.integers(1, 60, size=(B, 4)), np.full((B, 1), 63),
                                             np.zeros((B, 3))], 1).astype(np.int32)}
  concepts = rng.normal(size=(5, 16)).astype(np.float32)
  tx = opt.sgd(0.1, weight_decay=1e-4, clip_norm=5.0)
  mask = opt.trainable_mask(params, (r"^visual/(layer2|layer3|layer4|attnpool)/",),
                            (clip_lib.FROZEN_BN_REGEX,))
  step = make_pretrain_step(model, model, tx, mask, make_proposal_fn("boxes_jitter", 6),
                            LossConfig(group_size=2, concept_threshold=0.2), seed=3)
  frozen = {"teacher_params": teacher, "concept_emb": concepts, "teacher_concept_emb": concepts}

  def run(ndev, sharding_mode):
    mesh = make_mesh(ndev)
    state = create_train_state(jax.tree.map(np.copy, params), tx, mask)
    fn, state, fz = jit_step(step, mesh, state, mode=sharding_mode, min_size=256, frozen=frozen)
    if jax.process_count() > 1:
      lo = jax.process_index() * (B // 2)
      local = {k: v[lo:lo + B // 2] for k, v in batch.items()}
    else:
      local = batch
    state, metrics = fn(state, global_batch(local, mesh), fz)
    from jax.experimental import multihost_utils
    p = multihost_utils.process_allgather(state.params, tiled=True) if jax.process_count() > 1 else state.params
    flat = {"/".join(str(k.key) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(jax.device_get(p))}
    flat.update({"metric/" + k: np.asarray(v) for k, v in jax.device_get(metrics).items()})
    w0 = params["visual"]["layer3"]["0"]["conv2"]["kernel"]
    flat["metric/layer3_update"] = np.linalg.norm(flat["visual/layer3/0/conv2/kernel"] - w0) / np.linalg.norm(w0)
    return flat

  results = {}
  if mode == "multiprocess":
    results["dp8"] = run(8, "replicate")
  else:
    results["dp1"] = run(1, "replicate")
    results["dp8"] = run(8, "replicate")
    results["fsdp8"] = run(8, "fsdp")
  if jax.process_index() == 0:
    np.savez(out, **{f"{name}|{k}": v for name, r in results.items() for k, v in r.items()})
  print("ok", jax.process_index(), jax.device_count(), flush=True)
""")


def _env():
  return dict(
      os.environ,
      PYTHONPATH=REPO,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=8",
  )


def _load(path):
  z = np.load(path)
  out = {}
  for key in z.files:
    name, k = key.split("|", 1)
    out.setdefault(name, {})[k] = z[key]
  return out


def _assert_close(a, b, what, rtol=1e-5, atol=1e-7):
  """Per tensor ||b - a|| <= rtol ||a|| + atol sqrt(n): relative in norm (elementwise relative
  error is meaningless near 0), with an RMS floor for tensors that are pure rounding noise (the
  attnpool k bias has an exactly-zero gradient). Losses are one-element tensors here."""
  assert a.keys() == b.keys()
  worst = 0.0
  for k in a:
    x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
    err = np.linalg.norm(y - x)
    rel = err / max(np.linalg.norm(x), 1e-30)
    if np.linalg.norm(x) > 1e-3:
      worst = max(worst, rel)
    assert err <= rtol * np.linalg.norm(x) + atol * np.sqrt(
        x.size
    ), f"{what}: {k} differs by {rel:.2e} relative (|a| = {np.linalg.norm(x):.3g})"
  print(f"{what}: worst tensor relative difference {worst:.2e}")


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
  d = tmp_path_factory.mktemp("shard")
  (d / "job.py").write_text(JOB)
  res = subprocess.run(
      [sys.executable, str(d / "job.py"), "single", str(d / "single.npz")],
      env=_env(),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  return d, _load(d / "single.npz")


def test_one_device_equals_eight_devices_dp_and_fsdp(single_process):
  _, r = single_process
  dp1 = r["dp1"]
  assert np.isfinite(dp1["metric/loss"]) and dp1["metric/region_distill"] > 0
  assert dp1["metric/layer3_update"] > 1e-3  # the step moved the weights far beyond the tolerance
  _assert_close(dp1, r["dp8"], "8-device data parallel")
  _assert_close(dp1, r["fsdp8"], "8-device FSDP")


@pytest.mark.slow
def test_two_processes_equal_one_process(single_process):
  d, r = single_process
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  env = _env()
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  procs = [
      subprocess.Popen(
          [sys.executable, str(d / "job.py"), "multiprocess", str(d / "multi.npz"), str(i), port],
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (o, e) in zip(procs, outs):
    assert p.returncode == 0, e[-3000:]
    assert "8" in o.split()[-1]  # 8 global devices seen by each process
  multi = _load(d / "multi.npz")
  _assert_close(r["dp1"], multi["dp8"], "2 processes x 4 devices")
