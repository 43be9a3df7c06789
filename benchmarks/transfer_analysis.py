r"""What base-class fine-tuning takes from each detector init (docs/findings.md, "What the
student init loses in fine-tuning"), on one seed of a finished pipeline run.

  python -m regionclip_jax.main --config=configs/pipeline.py --workdir=DIR   # first: one seed
  python benchmarks/transfer_analysis.py --workdir=DIR [--seed=0 --inits=student,teacher]

Three measurements:
  1. zero-shot detection AP50 with the ground-truth boxes (recognition only) beside the
     pipeline's zero-shot detection on RPN proposals (recognition and how scores rank boxes);
  2. fine-tuning variants from each init, AP50 novel / base with the detector alone and with the
     score ensemble: the preset (the pipeline's own fine-tunes, reused), the attention pool frozen
     (`model.frozen`), only the RoI head (res5 + attention pool) and box deltas trained, a tenth of
     the learning rate, 100 steps instead of 500;
  3. zero-shot region top-1 with GT boxes (the teacher's concept pool, the pretraining
     evaluation) of each init and of every fine-tuned detector's backbone.
Each fine-tune goes to DIR/seed_<s>/transfer/<variant>_<init>/ and is reused when done
(`pipeline.fine_tuned`). Writes DIR/seed_<s>/transfer_analysis.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import pipeline as pipeline_configs  # noqa: E402
from regionclip_jax import files, pipeline  # noqa: E402
from regionclip_jax.detection import export, finetune  # noqa: E402
from regionclip_jax.pretrain import region_eval, sources  # noqa: E402
from regionclip_jax.pretrain.common import load_clip  # noqa: E402
from regionclip_jax.pretrain.concept_pool import concept_pool  # noqa: E402
from regionclip_jax.pretrain.tokens import make_tokenize  # noqa: E402
from regionclip_jax.train.compile_cache import compilation_cache  # noqa: E402


def _lr(ft, factor):
  ft.optimizer.lr = ft.optimizer.lr * factor


def _steps(ft, n):
  ft.train.num_steps = n
  ft.optimizer.decay_steps = (int(0.8 * n),)


# variant id (its directory: transfer/<id>_<init>) -> (its label, how it changes the pipeline's
# fine-tuning config)
VARIANTS = {
    "preset": ("preset", lambda ft: None),
    "no_attnpool": (
        "attention pool frozen",
        lambda ft: setattr(ft.model, "frozen", ("attnpool/",)),
    ),
    "head_only": (
        "RoI head + box deltas only",
        lambda ft: setattr(ft.model, "frozen", (r"backbone/visual/layer[23]/",)),
    ),
    "lr1e-4": ("lr / 10", lambda ft: _lr(ft, 0.1)),
    "steps100": ("100 steps", lambda ft: _steps(ft, 100)),
}
GROUPS = ("all", "base", "novel")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True, help="a configs/pipeline.py run's workdir")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--inits", default="student,teacher", help="any of student,teacher,control")
  ap.add_argument("--variants", default=",".join(VARIANTS), help="any of " + ",".join(VARIANTS))
  args = ap.parse_args()
  variants = args.variants.split(",")
  if any(v not in VARIANTS for v in variants):
    sys.exit(f"transfer_analysis: --variants: unknown variant; known: {list(VARIANTS)}")
  config = pipeline_configs.get_config()
  workdir = os.path.abspath(args.workdir)
  seed_dir = os.path.join(workdir, f"seed_{args.seed}")
  paths = pipeline.seed_paths(seed_dir)
  inits = args.inits.split(",")
  unknown = [i for i in inits if i not in ("student", "teacher", "control")]
  if unknown:
    sys.exit(f"transfer_analysis: --inits: unknown init {unknown[0]!r}")
  needed = [paths[i] for i in inits] + [paths["rpn"], paths["teacher"]]
  needed += [os.path.join(seed_dir, f"zero_shot_detection_{i}.json") for i in inits]
  missing = [p for p in needed if not os.path.exists(p)]
  if missing:
    sys.exit(f"transfer_analysis: {missing[0]} does not exist: run the pipeline first")

  lines, out = [], {"zero_shot": {}, "finetune": {}, "region_top1": {}}
  with compilation_cache(os.path.join(workdir, "xla_cache")):
    # 1. recognition alone (GT boxes) against recognition + ranking (proposals)
    lines += [
        f"Seed {args.seed}. Zero-shot detection AP50 novel / base (%): ground-truth boxes "
        "(recognition only) and RPN proposals (the pipeline's)",
        "",
        "| init | GT boxes | RPN proposals |",
        "|---|---|---|",
    ]
    for init in inits:
      ft = pipeline.finetune_config(config, args.seed, paths[init], paths["rpn"], paths["teacher"])
      gt = finetune.zero_shot_detection(ft, use_gt_boxes=True)
      with open(os.path.join(seed_dir, f"zero_shot_detection_{init}.json")) as f:
        rpn = json.load(f)
      out["zero_shot"][init] = {
          "gt_boxes": {k: gt[k] for k in pipeline.AP_KEYS},
          "proposals": {k: rpn[k] for k in pipeline.AP_KEYS},
      }
      lines.append(
          f"| {init} | {gt['AP50_novel']:.1f} / {gt['AP50_base']:.1f} | "
          f"{rpn['AP50_novel']:.1f} / {rpn['AP50_base']:.1f} |"
      )
    # 2. fine-tuning variants
    lines += [
        "",
        "Fine-tuning variants, AP50 novel / base (%)",
        "",
        "| variant | " + " | ".join(f"{i}, alone | {i}, ensemble" for i in inits) + " |",
        "|---" * (1 + 2 * len(inits)) + "|",
    ]
    ft_dirs = {}
    for variant in variants:
      label, change = VARIANTS[variant]
      cells = []
      for init in inits:
        ft = pipeline.finetune_config(
            config, args.seed, paths[init], paths["rpn"], paths["teacher"]
        )
        change(ft)
        ft_dir = os.path.join(
            seed_dir, f"finetune_{init}" if variant == "preset" else f"transfer/{variant}_{init}"
        )
        m = pipeline.fine_tuned(ft, ft_dir)
        alone = m.get("without_ensemble", m)
        ft_dirs[(variant, init)] = ft_dir
        out["finetune"][f"{label}/{init}"] = {
            "alone": {k: alone[k] for k in pipeline.AP_KEYS},
            "ensemble": {k: m[k] for k in pipeline.AP_KEYS},
            "dir": ft_dir,
        }
        cells += [
            f"{alone['AP50_novel']:.1f} / {alone['AP50_base']:.1f}",
            f"{m['AP50_novel']:.1f} / {m['AP50_base']:.1f}",
        ]
      lines.append(f"| {label} | " + " | ".join(cells) + " |")

  # 3. region recognition with GT boxes before and after each fine-tuning
  pre = config.pretrain.copy_and_resolve_references()
  pre.seed = args.seed
  eval_source = sources.shapes_eval_source(pre)
  teacher = load_clip(paths["teacher"])
  concept_emb = concept_pool(pre, *teacher, make_tokenize(pre), list(eval_source.concepts))
  models = {}
  for init in inits:
    cfg, params = load_clip(paths[init])
    models[f"{init}/init"] = (cfg, params)
    for variant in variants:
      _, variables, _ = export.load_export(os.path.join(ft_dirs[(variant, init)], "export"))
      models[f"{init}/{variant}"] = (
          cfg,
          {**params, "visual": variables["params"]["backbone"]["visual"]},
      )
  acc = region_eval.evaluate(
      pre, models, eval_source, concept_emb, eval_source.base_indices, eval_source.novel_indices
  )
  lines += [
      "",
      "Zero-shot region top-1 with GT boxes (%, all / base / novel; "
      f"{next(iter(acc.values()))['n_all']} held-out regions) of each init and its fine-tuned backbones",
      "",
      "| model | " + " | ".join(inits) + " |",
      "|---" * (1 + len(inits)) + "|",
  ]
  for variant in ("init", *variants):
    label = VARIANTS[variant][0] if variant in VARIANTS else variant
    cells = []
    for init in inits:
      a = acc[f"{init}/{variant}"]
      out["region_top1"][f"{init}/{label}"] = {g: float(a[g]) for g in GROUPS}
      cells.append(" / ".join(f"{100 * a[g]:.1f}" for g in GROUPS))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")

  table = "\n".join(lines)
  files.write_text(os.path.join(seed_dir, "transfer_analysis.md"), table + "\n")
  with files.atomic_open(os.path.join(seed_dir, "transfer_analysis.json")) as f:
    json.dump(out, f, indent=1, default=float)
  print(table)


if __name__ == "__main__":
  main()
