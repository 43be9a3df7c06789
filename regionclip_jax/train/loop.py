"""Generic resumable train loop: a step function, a state, an iterator.

Used by the CLIP-teacher stage, RegionCLIP pretraining and detector fine-tuning alike.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np

from regionclip_jax.data.validation import report_all
from regionclip_jax.train.checkpoint import Checkpointer
from regionclip_jax.train.logger import MetricWriter, Progress
from regionclip_jax.train.preflight import check_free_space, check_writable

PyTree = Any
StepFn = Callable[[PyTree, PyTree], tuple[PyTree, Mapping[str, jax.Array]]]


class NonFiniteLossError(RuntimeError):
  """A loss term became nan/inf; the message names the step and the term."""


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
  """Raise NonFiniteLossError naming the first non-finite term (loss terms first)."""
  bad = [k for k, v in metrics.items() if not math.isfinite(float(v))]
  if bad:
    bad.sort(key=lambda k: (k != "loss" and not k.startswith("loss"), k))
    raise NonFiniteLossError(
        f"non-finite loss at step {step}: {bad[0]} = {float(metrics[bad[0]])}"
        + (f" (also {', '.join(bad[1:])})" if len(bad) > 1 else "")
        + "; the last good checkpoint was left intact"
    )


def train_loop(
    *,
    state: PyTree,
    step_fn: StepFn,
    data: Iterator,
    num_steps: int,
    workdir: str,
    put_batch: Callable[[PyTree], PyTree] = lambda b: b,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    async_checkpoints: bool = True,
    log_every: int = 50,
    images_per_step: int = 1,
    name: str = "train",
    on_log: Callable[[int, dict], None] | None = None,
) -> PyTree:
  """Run `state, metrics = step_fn(state, put_batch(next(data)))` up to `num_steps`.

  Resumes from the latest checkpoint in `<workdir>/checkpoints` (train state and iterator
  state together; `data` must have get_state/set_state to be resumable). Metrics of step t are
  read back while step t+1 runs, and every step is checked before a checkpoint is written, so a
  non-finite loss raises NonFiniteLossError and never reaches a checkpoint. TensorBoard events
  and metrics.jsonl go to `<workdir>/tensorboard`. Returns the final state.
  """
  # before any step: a run that cannot write its checkpoints says so now, in one line
  check_writable(workdir)
  check_free_space(workdir, state)
  ckpt = Checkpointer(
      os.path.join(workdir, "checkpoints"),
      max_to_keep=keep_checkpoints,
      async_save=async_checkpoints,
  )
  writer = MetricWriter(os.path.join(workdir, "tensorboard"))
  try:
    restored, iter_state = ckpt.restore(state)
    if restored is not None:
      state = restored
      if iter_state is not None and hasattr(data, "set_state"):
        data.set_state(iter_state)
    start = int(jax.device_get(state.step))
    if jax.process_index() == 0:
      print(
          f"[{name}] {'resumed at' if restored is not None else 'starting at'} step {start}"
          f" of {num_steps}; workdir {os.path.abspath(workdir)}",
          flush=True,
      )
    progress = Progress(name, num_steps, images_per_step, start_step=start)
    acc: dict[str, list[float]] = {}
    pending = None

    def settle(step, metrics):
      host = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
      check_finite(step, host)
      for k, v in host.items():
        acc.setdefault(k, []).append(v)
      if step % log_every == 0 or step == num_steps:
        means = {k: float(np.mean(v)) for k, v in acc.items()}
        acc.clear()
        img_s = progress.log(step, means)
        writer.write(step, {**means, "images_per_second": img_s})
        if on_log is not None:
          on_log(step, means)

    for step in range(start, num_steps):
      batch = next(data)
      state, metrics = step_fn(state, put_batch(batch))
      if pending is not None:
        settle(*pending)
      pending = (step + 1, metrics)
      if (step + 1) % checkpoint_every == 0 or step + 1 == num_steps:
        settle(*pending)
        pending = None
        ckpt.save(step + 1, state, data.get_state() if hasattr(data, "get_state") else None)
    if pending is not None:
      settle(*pending)
    issues = report_all()
    if issues and jax.process_index() == 0:
      print(f"[{name}] data records skipped or repaired (policy 'skip'):\n{issues}", flush=True)
    return state
  finally:
    ckpt.close()
    writer.close()
