"""Entry point: `python -m regionclip_jax.main --config=configs/<task>.py[:preset] [--workdir=DIR]`.

Dispatches on `config.task` to a module exposing `run(config, workdir)`.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# jax and the package are imported inside main(): the process may first re-execute itself
# (_relaunch_with_huge_page_malloc) and should not pay those imports twice.

# Imported by name when dispatched: each task pulls in its own stack (detection, pretraining...).
TASKS = {
    "pretrain": "regionclip_jax.stages",
    "detection": "regionclip_jax.detection.run",
    "zero_shot": "regionclip_jax.tools.zero_shot",
    "extract_region_features": "regionclip_jax.tools.extract_region_features",
    "pipeline": "regionclip_jax.pipeline",
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/<task>.py[:preset]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (default: printed, under the temp dir)."
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() (multi-host; env/cluster auto-detected).",
)


# glibc's malloc madvises the chunks it maps for transparent huge pages (glibc >= 2.35).
MALLOC_TUNABLE = "glibc.malloc.hugetlb=1"
NO_RELAUNCH_ENV = "REGIONCLIP_JAX_NO_RELAUNCH"


def _glibc_version() -> tuple[int, ...] | None:
  try:  # Windows: no confstr; macOS: unknown name; musl: EINVAL or None
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    return tuple(int(v) for v in version.split(".")[:2]) if name == "glibc" else None
  except (AttributeError, OSError, TypeError, ValueError):
    return None


def _relaunch_with_huge_page_malloc() -> None:
  """Re-executes this command once, with GLIBC_TUNABLES asking malloc for huge pages.

  XLA CPU maps each step's temporary buffers afresh, and with 4 KiB pages the kernel then
  faults them in page by page: the shapes-world teacher step took ~39,000 page faults, a third of
  its CPU time in the kernel (156 -> 119 ms a step with the tunable, 2 cores; docs/findings.md,
  "Host memory"). Only the allocator changes, so trained numbers stay bit-identical
  (tests/test_main_relaunch.py). glibc reads tunables at process start only, hence the re-exec,
  before jax is imported. Skipped off glibc or on glibc < 2.35, when GLIBC_TUNABLES is set (the
  user's choice stands; this also ends the recursion), with REGIONCLIP_JAX_NO_RELAUNCH=1, and
  when the interpreter cannot be re-executed.
  """
  if os.environ.get("GLIBC_TUNABLES") is not None or os.environ.get(NO_RELAUNCH_ENV) == "1":
    return
  if not sys.executable:  # an embedded interpreter: nothing to re-execute
    return
  version = _glibc_version()
  if version is None or version < (2, 35):
    return
  argv = [sys.executable, *sys.orig_argv[1:]]
  try:
    os.execve(sys.executable, argv, {**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLE})
  except OSError:  # the interpreter cannot be re-executed: run on without huge pages
    return


def main(argv):
  import jax  # after the relaunch (see the imports above)

  from regionclip_jax.data.validation import DataError
  from regionclip_jax.train.loop import NonFiniteLossError
  from regionclip_jax.train.preflight import (
      PreflightError,
      check_local_paths,
      check_writable,
  )

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/pretrain.py")
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  task = config.get("task")
  if task not in TASKS:
    raise app.UsageError(f"config.task={task!r} is not one of {sorted(TASKS)}")
  module = importlib.import_module(TASKS[task])
  try:
    check_local_paths(config, _WORKDIR.value)
    if _WORKDIR.value:
      check_writable(_WORKDIR.value)
  except PreflightError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  try:
    module.run(config, _WORKDIR.value)
  except PreflightError as e:  # a setting or the machine rules the run out: one line, no trace
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except (NonFiniteLossError, DataError) as e:
    # bad input (the user's files, class lists) or a diverged run: one line, no traceback
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


def run_main():
  _relaunch_with_huge_page_malloc()
  app.run(main)


if __name__ == "__main__":
  run_main()
