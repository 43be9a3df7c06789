"""Interleaved timing shared by the CPU benchmarks (run as `python benchmarks/<name>.py`, so this
directory is on sys.path)."""

from __future__ import annotations

import statistics
import time


def interleaved_medians(fns: dict, repeats: int) -> dict:
  """One warm-up (compile) call of each callable, then `repeats` rounds of one call each in turn;
  -> {name: median seconds}. Load from other processes on a shared machine hits every variant
  alike, so ratios between them stay meaningful."""
  for fn in fns.values():
    fn()
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}
