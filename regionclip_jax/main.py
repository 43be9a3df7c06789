"""Entry point: `python -m regionclip_jax.main --config=configs/<task>.py[:preset] [--workdir=DIR]`.

Dispatches on `config.task` to a module exposing `run(config, workdir)`.
"""

from __future__ import annotations

import importlib
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from regionclip_jax.data.validation import DataError
from regionclip_jax.train.loop import NonFiniteLossError
from regionclip_jax.train.preflight import PreflightError, check_local_paths, check_writable

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


def main(argv):
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
  app.run(main)


if __name__ == "__main__":
  run_main()
