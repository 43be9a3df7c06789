"""Top ops by time from a `jax.profiler.trace` directory, offline (no TensorBoard / xprof needed).

    python benchmarks/gpu/profile_summary.py TRACE_DIR [--steps=3] [--title=...]

Reads the `*.trace.json.gz` (Chrome trace events) that the profiler writes beside the xplane.
GPU traces have one process per device whose threads are CUDA streams (kernel events, with the
HLO op in `args.hlo_op` when XLA launched them) and derived lines such as "XLA Ops". Tables:
time per device line, top HLO ops, top kernels, and kernel time by category, all in ms per
step (= totals / --steps). On CPU the trace holds no per-op device events; the summary then
lists the host events (enough to check the script end to end).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

DERIVED_LINES = {  # per-op lines the trace viewer derives from the kernels (not extra device time)
    "XLA Ops",
    "XLA Modules",
    "Steps",
    "Framework Ops",
    "Framework Name Scope",
    "TensorFlow Ops",
    "TensorFlow Name Scope",
    "Source code",
    "XLA TraceMe",
}
CATEGORIES = (  # first match wins, tested on the lower-cased kernel / op name
    ("convolution (cuDNN)", r"conv|cudnn|implicit_gemm|xmma_fprop|dgrad|wgrad|fprop"),
    ("matmul (cuBLAS / Triton gemm)", r"gemm|cublas|matmul|dot|cutlass|sm90_xmma|nvjet"),
    ("transpose / copy", r"transpose|copy|memcpy"),
    ("reduction", r"reduce|reduction"),
    ("gather / scatter / sort", r"gather|scatter|sort|dynamic.slice|dynamic.update"),
    ("memset", r"memset"),
    ("other fusion", r"fusion|triton|loop_|input_"),
)


def trace(log_dir: str):
  """jax.profiler.trace without the Python tracer (smaller traces; device events are what count)."""
  import jax

  opts = jax.profiler.ProfileOptions()
  opts.python_tracer_level = 0
  return jax.profiler.trace(log_dir, profiler_options=opts)


def profile(trace_dir: str, title: str, steps: int, step_fn) -> str:
  """Traces `steps` calls of `step_fn` into `trace_dir` -> the summary; a failure -> one line."""
  try:
    with trace(trace_dir):
      for _ in range(steps):
        step_fn()
    return summarize(trace_dir, title, steps)
  except Exception as e:  # the profile is an extra: the timings are already written
    msg = f"### Profile: {title}\n\nProfiling failed: {e!r}"[:1000]
    print(msg, flush=True)
    return msg + "\n"


def find_trace(trace_dir: str) -> str | None:
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
  files = files or sorted(glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True))
  return files[-1] if files else None


def load(path: str):
  with gzip.open(path, "rt") as f:
    d = json.load(f)
  events = d["traceEvents"] if isinstance(d, dict) else d
  procs, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      procs[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e["pid"], e["tid"])] = e["args"]["name"]
  spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
  return procs, threads, spans


def category(name: str) -> str:
  low = name.lower()
  for cat, pat in CATEGORIES:
    if re.search(pat, low):
      return cat
  return "other"


def _table(title, totals, counts, steps, total_ms, top):
  rows = [f"**{title}**", "", "| # | name | calls/step | ms/step | % |", "|---|---|---|---|---|"]
  for i, (k, us) in enumerate(sorted(totals.items(), key=lambda kv: -kv[1])[:top]):
    ms = us / 1e3 / steps
    pct = f"{100 * ms / total_ms:.1f}" if total_ms else "-"
    name = k if len(k) <= 90 else k[:87] + "..."
    rows.append(f"| {i + 1} | `{name}` | {counts[k] / steps:.0f} | {ms:.3f} | {pct} |")
  return rows + [""]


def summarize(trace_dir: str, title: str, steps: int = 1, top: int = 25) -> str:
  path = find_trace(trace_dir)
  out = [f"### Profile: {title}", ""]
  if not path:
    return "\n".join(out + [f"No trace file under `{trace_dir}`.", ""])
  procs, threads, spans = load(path)
  out += [f"Trace `{os.path.relpath(path, trace_dir)}` ({len(spans)} events, {steps} steps).", ""]
  device = {p for p, n in procs.items() if "/device:" in n and "host" not in n.lower()}
  line = lambda e: threads.get((e["pid"], e["tid"]), str(e["tid"]))
  if not device:
    totals, counts = collections.Counter(), collections.Counter()
    for e in spans:
      totals[e["name"]] += e["dur"]
      counts[e["name"]] += 1
    out += ["No device events (CPU trace): host events instead.", ""]
    return "\n".join(out + _table("host events", totals, counts, steps, 0.0, 15))
  dev = [e for e in spans if e["pid"] in device]
  # Every kernel and copy of a jitted program carries its module (`jit_step`). A compile running
  # beside the profiled steps autotunes on the same GPU: its kernels come as modules named after
  # single ops, or with no module (buffer checks, copies). Keep the program's own, say what went.
  module = lambda e: e.get("args", {}).get("hlo_module")
  jit_mods = {module(e) for e in dev if (module(e) or "").startswith("jit_")}
  if jit_mods:
    dropped = sum(e["dur"] for e in dev if module(e) not in jit_mods)
    dev = [e for e in dev if module(e) in jit_mods]
    if dropped:
      out += [
          f"Kept the kernels of `{', '.join(sorted(jit_mods))}`; dropped {dropped / 1e3 / steps:.2f}"
          " ms/step of others (autotuning of a compile running beside the profiled steps).",
          "",
      ]
  per_line, n_line = collections.Counter(), collections.Counter()
  for e in dev:
    per_line[f"{procs[e['pid']]} / {line(e)}"] += e["dur"]
    n_line[f"{procs[e['pid']]} / {line(e)}"] += 1
  streams = [e for e in dev if line(e).lower().startswith("stream")]
  streams = streams or [e for e in dev if line(e) not in DERIVED_LINES]
  stream_ms = sum(e["dur"] for e in streams) / 1e3 / steps
  out += [f"Kernel time summed over streams: **{stream_ms:.2f} ms/step**.", ""]
  out += _table("device lines (busy time)", per_line, n_line, steps, 0.0, 12)
  ops, n_ops = collections.Counter(), collections.Counter()
  xla_ops = [e for e in dev if line(e) == "XLA Ops"]
  for e in xla_ops or streams:
    k = e["name"] if xla_ops else (e.get("args", {}).get("hlo_op") or e["name"])
    ops[k] += e["dur"]
    n_ops[k] += 1
  out += _table("top HLO ops", ops, n_ops, steps, stream_ms, top)
  kern, n_kern, cats, n_cats = (collections.Counter() for _ in range(4))
  for e in streams:
    kern[e["name"]] += e["dur"]
    n_kern[e["name"]] += 1
    c = category(e.get("args", {}).get("hlo_op", "") + " " + e["name"])
    cats[c] += e["dur"]
    n_cats[c] += 1
  out += _table("top kernels", kern, n_kern, steps, stream_ms, top)
  out += _table("kernel time by category", cats, n_cats, steps, stream_ms, len(CATEGORIES) + 1)
  return "\n".join(out)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("trace_dir")
  p.add_argument("--steps", type=int, default=1)
  p.add_argument("--title", default="")
  a = p.parse_args()
  print(summarize(a.trace_dir, a.title or a.trace_dir, a.steps))


if __name__ == "__main__":
  main()
