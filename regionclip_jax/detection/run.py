"""`main.py` entry for task "detection": dispatches on `config.stage`.

stage "rpn"       -> detection.finetune.train_rpn      (offline class-agnostic RPN on base boxes)
stage "finetune"  -> detection.finetune.train_detector (open-vocabulary detector on base classes)

Zero-shot inference (configs/zero_shot.py) is a task of its own, "zero_shot"
(regionclip_jax.tools.zero_shot.run).
"""

from __future__ import annotations

import os
import tempfile

from regionclip_jax.detection import finetune

STAGES = ("rpn", "finetune")


def run(config, workdir: str | None = None):
  stage = config.get("stage")
  if stage == "zero_shot":
    # the stage moved out of this task; an old config still names it
    raise ValueError(
        f"{__name__}: config.stage='zero_shot' is no longer a stage of task 'detection'; "
        "run it as task 'zero_shot' (configs/zero_shot.py sets it; the tool: "
        "python -m regionclip_jax.tools.zero_shot)"
    )
  if stage not in STAGES:
    raise ValueError(f"{__name__}: config.stage={stage!r} is not one of {STAGES}")
  if not workdir:
    workdir = config.get("workdir") or tempfile.mkdtemp(prefix=f"regionclip_{stage}_")
    print(f"[detection] workdir {workdir}", flush=True)
  os.makedirs(workdir, exist_ok=True)
  if stage == "rpn":
    return finetune.train_rpn(config, workdir)
  return finetune.train_detector(config, workdir)
