"""Progress lines, TensorBoard event files and a metrics.jsonl in the workdir."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping

import jax

LOSS_TERMS = ("region_distill", "region_contrastive", "image_text")


def format_eta(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricWriter:
  """Writes scalars to TensorBoard (tensorboardX) and metrics.jsonl; process 0 only."""

  def __init__(self, logdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      os.makedirs(logdir, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(logdir)
      except ImportError:  # TensorBoard is optional; the jsonl is always written.
        self._tb = None
      self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), step)
    self._jsonl.write(
        json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n"
    )
    self._jsonl.flush()

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


class Progress:
  """`[name] step 120/2000 | loss 1.234 | region_distill 0.5 | 45.2 img/s | ETA 3m12s`."""

  def __init__(
      self, name: str, total_steps: int, images_per_step: int, start_step: int = 0, stream=None
  ):
    self.name, self.total, self.ips = name, total_steps, images_per_step
    self.stream = stream or sys.stdout
    self._t, self._s = time.perf_counter(), start_step

  def line(self, step: int, scalars: Mapping[str, float]) -> tuple[str, float]:
    now = time.perf_counter()
    dt, ds = now - self._t, step - self._s
    self._t, self._s = now, step
    sec_per_step = dt / ds if ds > 0 else float("nan")
    img_s = self.ips / sec_per_step if ds > 0 and dt > 0 else float("nan")
    parts = [f"[{self.name}] step {step}/{self.total}"]
    order = sorted(scalars, key=lambda k: (k != "loss", k not in LOSS_TERMS, k))
    parts += [f"{k} {scalars[k]:.4g}" for k in order]
    parts += [
        f"{img_s:.1f} img/s",
        f"ETA {format_eta((self.total - step) * sec_per_step) if ds > 0 else '?'}",
    ]
    return " | ".join(parts), img_s

  def log(self, step: int, scalars: Mapping[str, float]) -> float:
    text, img_s = self.line(step, scalars)
    if jax.process_index() == 0:
      print(text, file=self.stream, flush=True)
    return img_s
