"""Train loop on a toy model: SIGKILL + resume equals an uninterrupted run; non-finite loss stops
the run naming step and term with the last good checkpoint intact; TensorBoard + progress lines."""

import glob
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOY_JOB = textwrap.dedent("""
  import os, signal, sys
  import grain, jax, jax.numpy as jnp, numpy as np
  from regionclip_jax.train import optimizer as opt
  from regionclip_jax.train.loop import train_loop
  from regionclip_jax.train.state import apply_gradients, create_train_state, masked_value_and_grad

  workdir, num_steps, kill_at, nan_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(64, 3)).astype(np.float32)
  ys = (xs @ np.array([1.0, -2.0, 0.5], np.float32))[:, None]
  if nan_at >= 0:
    xs[nan_at * 4: nan_at * 4 + 4] = np.inf   # batch `nan_at` (unshuffled) is poisoned
  def load(i):
    return {"x": xs[i], "y": ys[i]}
  ds = grain.MapDataset.range(64).map(load).batch(4).repeat(10)
  it = iter(ds.to_iter_dataset())
  params = {"w": jnp.zeros((3, 1)), "b": jnp.zeros((1,)), "frozen": jnp.array([-0.0, 3.0])}
  mask = {"w": True, "b": True, "frozen": False}
  tx = opt.sgd(opt.warmup_multistep_schedule(0.1, 3, 0.1, (8,)), weight_decay=1e-3, clip_norm=5.0)
  state = create_train_state(params, tx, mask)
  calls = [0]

  def loss_fn(p, batch):
    pred = batch["x"] @ p["w"] + p["b"] + 0.0 * jnp.sum(p["frozen"])
    mse = jnp.mean((pred - batch["y"]) ** 2)
    return mse, {"mse": mse}

  @jax.jit
  def jitted(state, batch):
    (loss, aux), g = masked_value_and_grad(loss_fn, state.params, mask, batch)
    return apply_gradients(state, g, tx, mask), {"loss": loss, **aux}

  def step_fn(state, batch):
    calls[0] += 1
    if int(state.step) == kill_at:
      os.kill(os.getpid(), signal.SIGKILL)
    return jitted(state, batch)

  state = train_loop(state=state, step_fn=step_fn, data=it, num_steps=num_steps, workdir=workdir,
                     checkpoint_every=2, log_every=3, images_per_step=4, name="toy")
  np.save(os.path.join(workdir, "final.npy"), np.concatenate([np.asarray(state.params["w"]).ravel(),
          np.asarray(state.params["b"]), np.asarray(state.params["frozen"])]))
""")


def _run(tmp_path, workdir, num_steps, kill_at=-1, nan_at=-1):
  script = tmp_path / "toy_job.py"
  script.write_text(TOY_JOB)
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, str(script), str(workdir), str(num_steps), str(kill_at), str(nan_at)],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_sigkill_resume_equals_uninterrupted(tmp_path):
  ref = _run(tmp_path, tmp_path / "ref", 11)
  assert ref.returncode == 0, ref.stderr[-2000:]
  assert "[toy] step 3/11 | loss" in ref.stdout and "img/s | ETA" in ref.stdout
  assert glob.glob(str(tmp_path / "ref" / "tensorboard" / "events.out.tfevents.*"))

  killed = _run(tmp_path, tmp_path / "run", 11, kill_at=7)
  assert killed.returncode == -signal.SIGKILL
  assert not (tmp_path / "run" / "final.npy").exists()
  resumed = _run(tmp_path, tmp_path / "run", 11)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  # async saves: step 6 (or, if it had not committed when killed, step 4) is where it resumes.
  assert ("resumed at step 6" in resumed.stdout) or (
      "resumed at step 4" in resumed.stdout
  ), resumed.stdout
  a = np.load(tmp_path / "ref" / "final.npy")
  b = np.load(tmp_path / "run" / "final.npy")
  np.testing.assert_array_equal(a, b)
  assert np.signbit(a[-2])  # the frozen -0.0 survived training bit-for-bit


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  res = _run(tmp_path, tmp_path / "nan", 11, nan_at=5)
  assert res.returncode != 0
  assert "non-finite loss at step 6: loss = " in res.stderr, res.stderr[-2000:]
  steps = sorted(
      int(os.path.basename(p))
      for p in glob.glob(str(tmp_path / "nan" / "checkpoints" / "*"))
      if os.path.basename(p).isdigit()
  )
  assert steps and max(steps) == 4
  # the kept checkpoint restores to finite parameters
  from regionclip_jax.train.checkpoint import Checkpointer

  ck = Checkpointer(str(tmp_path / "nan" / "checkpoints"))
  import orbax.checkpoint as ocp

  meta = ck.manager.restore(
      4, args=ocp.args.Composite(state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore())
  )
  ck.close()
  leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(meta["state"])]
  assert all(np.all(np.isfinite(x)) for x in leaves)
  assert meta["data"]["iterator"] is not None


def test_skipped_records_are_reported_at_the_end(tmp_path, capsys):
  """Records a source dropped or repaired in 'skip' mode are listed when the run ends."""
  import jax.numpy as jnp
  from regionclip_jax.data.validation import IssueCounter
  from regionclip_jax.train import optimizer as opt
  from regionclip_jax.train.loop import train_loop
  from regionclip_jax.train.state import apply_gradients, create_train_state, masked_value_and_grad

  counter = IssueCounter("toy_instances.json")
  counter.add("empty_box", "image 7 box 2")
  params, mask = {"w": jnp.zeros((2,))}, {"w": True}
  tx = opt.sgd(0.1)
  state = create_train_state(params, tx, mask)

  def step_fn(state, batch):
    loss_fn = lambda p, b: (jnp.sum((p["w"] - b) ** 2), {})
    (loss, _), g = masked_value_and_grad(loss_fn, state.params, mask, batch)
    return apply_gradients(state, g, tx, mask), {"loss": loss}

  data = iter([jnp.ones((2,))] * 3)
  train_loop(
      state=state,
      step_fn=step_fn,
      data=data,
      num_steps=3,
      workdir=str(tmp_path),
      checkpoint_every=10,
      log_every=1,
      async_checkpoints=False,
      name="toy",
  )
  out = capsys.readouterr().out
  assert "data records skipped or repaired" in out
  assert "toy_instances.json: empty_box: 1 (e.g. image 7 box 2)" in out
