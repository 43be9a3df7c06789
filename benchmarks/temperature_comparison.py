r"""The classifier temperature of shapes-world fine-tuning, per detector init (docs/findings.md,
"Classifier temperature"): each init at its own pretraining temperature, and all at one shared
value, on one seed of a finished pipeline run.

  python -m regionclip_jax.main --config=configs/pipeline.py --workdir=DIR   # first: one seed
  python benchmarks/temperature_comparison.py --workdir=DIR [--seed=0 --inits=student,teacher]

Temperatures (tau of the cosine classifier, in training and at test time):
  own      the student 0.01 (pretrain.loss.temperature: its region losses ran at it); the teacher
           and the control 1 / their own learned logit scale (the image-text loss they trained with)
  teacher  1 / the teacher's learned logit scale for every init (configs/pipeline.py's
           temperature_from_teacher, the pipeline's own fine-tunes, reused)
  0.01     the official CLSS_TEMP for every init
Each fine-tune is the pipeline's (same seed, RPN, steps, test scenes) into
DIR/seed_<s>/temperature/<init>_tau<value>/, reused when done (`pipeline.fine_tuned`). Writes
the table (AP50 novel / base with the pipeline's score ensemble, and the detector alone) to
DIR/seed_<s>/temperature_comparison.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import pipeline as pipeline_configs  # noqa: E402
from regionclip_jax import files, pipeline  # noqa: E402
from regionclip_jax.detection import builders  # noqa: E402
from regionclip_jax.models.clip_model import learned_temperature  # noqa: E402
from regionclip_jax.train.compile_cache import compilation_cache  # noqa: E402


def _tau(path: str) -> float:
  return learned_temperature(builders.load_clip_params(path)[1])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="a configs/pipeline.py run's workdir")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--inits", default="student,teacher", help="any of student,teacher,control")
  args = ap.parse_args()
  config = pipeline_configs.get_config()
  seed_dir = os.path.join(os.path.abspath(args.workdir), f"seed_{args.seed}")
  paths = pipeline.seed_paths(seed_dir)
  missing = [p for p in paths.values() if not os.path.exists(p)]
  if missing:
    sys.exit(f"temperature_comparison: {missing[0]} does not exist: run the pipeline first")
  tau_teacher = _tau(paths["teacher"])
  own = {
      "student": lambda: config.pretrain.loss.temperature,
      "teacher": lambda: tau_teacher,
      "control": lambda: _tau(paths["control"]),
  }
  inits = args.inits.split(",")
  unknown = [i for i in inits if i not in own]
  if unknown:
    sys.exit(f"temperature_comparison: --inits: unknown init {unknown[0]!r}; known: {sorted(own)}")
  taus = {init: {"own": own[init](), "teacher": tau_teacher, "0.01": 0.01} for init in inits}

  rows, results = [], {}
  with compilation_cache(os.path.join(args.workdir, "xla_cache")):
    for init, by_label in taus.items():
      for label, tau in by_label.items():
        ft = pipeline.finetune_config(config, args.seed, paths[init], paths["rpn"], "")
        ft.roi_heads.temperature = float(tau)
        own_run = os.path.join(seed_dir, f"finetune_{init}")
        if abs(tau - tau_teacher) < 1e-9 and os.path.exists(os.path.join(own_run, "metrics.json")):
          ft_dir = own_run  # the pipeline's fine-tune at the teacher's temperature
        else:
          ft_dir = os.path.join(seed_dir, "temperature", f"{init}_tau{tau:.4f}")
        m = pipeline.fine_tuned(ft, ft_dir)
        alone = m.get("without_ensemble", m)
        results[f"{init}/{label}"] = {"tau": tau, "ensemble": m, "alone": alone, "dir": ft_dir}
        rows.append(
            f"| {init} | {label} | {tau:.4f} | {m['AP50_novel']:.1f} / {m['AP50_base']:.1f} | "
            f"{alone['AP50_novel']:.1f} / {alone['AP50_base']:.1f} |"
        )
  table = "\n".join(
      [
          f"Seed {args.seed}: AP50 novel / base (%) after base-class fine-tuning, by the classifier "
          f"temperature tau",
          "",
          "| init | tau | value | with the score ensemble | detector alone |",
          "|---|---|---|---|---|",
          *rows,
      ]
  )
  files.write_text(os.path.join(seed_dir, "temperature_comparison.md"), table + "\n")
  aps = lambda m: {k: m[k] for k in pipeline.AP_KEYS}
  summary = {
      k: {
          "tau": v["tau"],
          "ensemble": aps(v["ensemble"]),
          "alone": aps(v["alone"]),
          "dir": v["dir"],
      }
      for k, v in results.items()
  }
  with files.atomic_open(os.path.join(seed_dir, "temperature_comparison.json")) as f:
    json.dump(summary, f, indent=1)
  print(table)


if __name__ == "__main__":
  main()
