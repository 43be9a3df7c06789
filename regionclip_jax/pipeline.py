"""The whole shapes-world experiment in one command (docs/design.md, "Shapes world"):

    python -m regionclip_jax.main --config=configs/pipeline.py [--workdir=DIR]

For each seed, into <workdir>/seed_<s>/ (stages 1-3 are `regionclip_jax.stages`):
  1. image-level CLIP teacher                       pretrain/teacher/final
  2. class-agnostic RPN on base boxes (teacher init) rpn/export
  3. RegionCLIP pretraining with the RPN's proposals pretrain/student, plus the matched-compute
     control (teacher trained further on image-text pairs: same images, same steps)
                                                     pretrain/control/final
  4. open-vocabulary fine-tuning on base classes from each init (student / teacher / control),
     AP50 novel / base / all with pycocotools, scored as `finetune.test` says (the shapes preset:
     the score ensemble with the frozen init) and by the detector alone
                                                     finetune_<init>/metrics.json
  5. zero-shot detection from each init (no fine-tuning: RPN proposals, pretrained region
     embeddings, all class names)                  zero_shot_detection_<init>.json
Then the table over seeds (mean and spread) -> <workdir>/metrics.json, <workdir>/table.md and
the figures. Every stage is skipped when its output exists, so a rerun resumes. Compiled XLA
programs are kept in <workdir>/xla_cache (JAX's persistent cache), so the three detector
fine-tunes, which share their programs, compile them once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import numpy as np

from regionclip_jax import files, stages
from regionclip_jax.detection import builders, finetune
from regionclip_jax.evaluation import visualize
from regionclip_jax.train.compile_cache import compilation_cache

INITS = ("student", "teacher", "control")
REGION_MODELS = ("teacher", "control", "student")
AP_KEYS = ("AP50_novel", "AP50_base", "AP50_all")
DETECTION_TABLES = {
    "detection": "Claim b: detector AP50 (%) after the same base-class fine-tuning",
    "detection_without_ensemble": "The same fine-tuned detectors alone, without the score ensemble "
    "with their init (official RegionCLIP inference), AP50 (%)",
    "zero_shot_detection": "Zero-shot detection AP50 (%), no fine-tuning (RPN proposals, pretrained "
    "region embeddings)",
}


def _stage_time(timings: dict, name: str, t0: float) -> None:
  timings[name] = round(time.time() - t0, 1)


def seed_paths(seed_dir: str) -> dict:
  """The checkpoints one seed's stages 1-3 leave in `seed_dir`: the three detector inits and the
  RPN."""
  pre_dir = os.path.join(seed_dir, "pretrain")
  return {
      "student": os.path.join(pre_dir, "student"),
      "teacher": os.path.join(pre_dir, "teacher", "final"),
      "control": os.path.join(pre_dir, "control", "final"),
      "rpn": os.path.join(seed_dir, "rpn"),
  }


def finetune_config(config, seed: int, init: str, rpn_dir: str, teacher: str):
  """The detection stage's config for one seed and init (fine-tuning or zero-shot). With
  `temperature_from_teacher` every init's classifier uses 1 / the teacher's learned logit scale."""
  ft = config.finetune.copy_and_resolve_references()
  ft.seed = seed
  ft.model.init_checkpoint = init
  ft.rpn.checkpoint = rpn_dir
  if config.get("temperature_from_teacher", False):
    ft.roi_heads.temperature_from_checkpoint = teacher
  return ft


def fine_tuned(ft, ft_dir: str) -> dict:
  """`finetune.train_detector(ft, ft_dir)`'s metrics, read from its metrics.json when that run
  was scored with the same score-ensemble weights; otherwise it trains (or, with a final
  checkpoint there, only re-evaluates: train_detector resumes)."""
  done = os.path.join(ft_dir, "metrics.json")
  if os.path.exists(done):
    with open(done) as f:
      cached = json.load(f)
    # as train_detector records them in metrics.json
    weights = list(builders.inference_settings(ft).pretrained_score_weights or ())
    if cached.get("pretrained_score_weights", []) == weights:
      return cached
  return finetune.train_detector(ft, ft_dir)


def run_seed(config, seed: int, workdir: str) -> dict:
  """Stages 1-5 for one seed -> {"region": pretrain eval, "detection": {init: AP50s}, "seconds"}."""
  timings: dict = {}
  pre = config.pretrain.copy_and_resolve_references()
  pre.seed = seed
  pre_dir = os.path.join(workdir, "pretrain")

  t = time.time()
  teacher = stages.teacher(pre, pre_dir)
  _stage_time(timings, "teacher", t)

  t = time.time()
  # the detectors need it whatever the pretraining proposals are; beside the seed's detectors
  rpn_dir = stages.rpn(pre, teacher, os.path.join(workdir, "rpn"))
  _stage_time(timings, "rpn", t)

  t = time.time()
  pre.model.teacher_checkpoint = teacher
  pre.proposals.rpn_checkpoint = rpn_dir
  region = stages.regionclip(pre, pre_dir)
  _stage_time(timings, "pretrain_and_control", t)

  inits = {**seed_paths(workdir), "teacher": teacher}
  detection = {}
  for name in config.inits:
    t = time.time()
    ft = finetune_config(config, seed, inits[name], rpn_dir, teacher)
    detection[name] = fine_tuned(ft, os.path.join(workdir, f"finetune_{name}"))
    _stage_time(timings, f"finetune_{name}", t)
  t = time.time()
  zero_shot = {}
  for name in config.inits:
    path = os.path.join(workdir, f"zero_shot_detection_{name}.json")
    if os.path.exists(path):
      with open(path) as f:
        zero_shot[name] = json.load(f)
      continue
    ft = finetune_config(config, seed, inits[name], rpn_dir, teacher)
    t_init = time.time()
    zero_shot[name] = {
        k: v for k, v in finetune.zero_shot_detection(ft).items() if k != "per_category"
    }
    print(
        f"[pipeline] seed {seed}: zero-shot detection from the {name} init: AP50 novel "
        f"{zero_shot[name]['AP50_novel']:.1f} base {zero_shot[name]['AP50_base']:.1f} "
        f"({time.time() - t_init:.0f}s)",
        flush=True,
    )
    with files.atomic_open(path) as f:
      json.dump(zero_shot[name], f, indent=1)
  _stage_time(timings, "zero_shot_detection", t)
  ap = lambda res: {k: {m: v[m] for m in AP_KEYS} for k, v in res.items()}
  alone = {k: v["without_ensemble"] for k, v in detection.items() if "without_ensemble" in v}
  out = {
      "seed": seed,
      "region": region.get("zero_shot_region_top1", {}),
      "detection": ap(detection),
      "zero_shot_detection": ap(zero_shot),
      # the teacher's text tower: its closest concept pairs (name_a, name_b, cosine)
      "closest_concepts": region.get("closest_concepts", []),
      "seconds": timings,
  }
  if alone:
    out["detection_without_ensemble"] = ap(alone)
  return out


def _stats(values) -> dict:
  v = np.asarray(values, np.float64)
  return {
      "mean": float(v.mean()),
      "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
      "values": [float(x) for x in v],
  }


def summarize(per_seed: list[dict]) -> dict:
  """Mean and spread over seeds of every region accuracy, paired difference and AP50."""
  out: dict = {"num_seeds": len(per_seed), "seeds": [s["seed"] for s in per_seed], "region": {}}
  if all(s.get("closest_concepts") for s in per_seed):
    out["closest_concepts"] = [s["closest_concepts"][0] for s in per_seed]
  for model in per_seed[0]["region"]:
    out["region"][model] = {
        k: _stats([s["region"][model][k] for s in per_seed]) for k in per_seed[0]["region"][model]
    }
  for table in DETECTION_TABLES:
    out[table] = {
        init: {k: _stats([s[table][init][k] for s in per_seed]) for k in ap}
        for init, ap in per_seed[0].get(table, {}).items()
    }
  return out


def format_table(summary: dict) -> str:
  """Markdown table of both claims (percent; mean +- spread over seeds, or +- se for one seed)."""
  region, n = summary["region"], summary["num_seeds"]
  spread = "std over seeds" if n > 1 else "standard error"

  def cell(stats: dict, key: str, sign: str = "") -> str:
    m = 100 * stats[key]["mean"]
    e = 100 * (stats[key]["std"] if n > 1 else stats["se_" + key]["mean"])
    return f"{m:{sign}.1f} ± {e:.1f}"

  lines = [
      f"Claim a: zero-shot region recognition, top-1 with GT boxes (%, mean ± {spread}; "
      f"n = {int(region['student']['n_all']['mean'])} held-out regions per seed, {n} seed(s))",
      "",
      "| model | all | base | novel |",
      "|---|---|---|---|",
  ]
  for m in REGION_MODELS:
    if m in region:
      lines.append(
          f"| {m} | " + " | ".join(cell(region[m], g) for g in ("all", "base", "novel")) + " |"
      )
  for m in REGION_MODELS:
    key = f"student_minus_{m}"
    if key in region:
      lines.append(
          f"| student − {m} (paired) | "
          + " | ".join(cell(region[key], g, "+") for g in ("all", "base", "novel"))
          + " |"
      )
  if summary.get("closest_concepts"):
    lines += [
        "",
        "The teacher's closest concept pair (text-embedding cosine): "
        + "; ".join(
            f"seed {seed} {a}/{b} {c:.3f}"
            for seed, (a, b, c) in zip(summary["seeds"], summary["closest_concepts"])
        ),
    ]
  spread_ap = "std over seeds" if n > 1 else "n/a (one seed)"
  for table, title in DETECTION_TABLES.items():
    if not summary.get(table):
      continue
    if table == "detection" and summary.get("detection_without_ensemble"):
      title += ", scored with the score ensemble with each init (test.pretrained_score_weights)"
    lines += [
        "",
        f"{title} (mean ± {spread_ap})",
        "",
        "| init | novel | base | all |",
        "|---|---|---|---|",
    ]
    for init, stats in summary[table].items():
      vals = [
          f"{stats[k]['mean']:.1f}" + (f" ± {stats[k]['std']:.1f}" if n > 1 else "")  # percent
          for k in AP_KEYS
      ]
      lines.append(f"| {init} | " + " | ".join(vals) + " |")
  if n > 1:
    lines += ["", *_per_seed_table(summary)]
  return "\n".join(lines)


def _per_seed_table(summary: dict) -> list[str]:
  """Each seed's paired region differences and novel AP50 gaps (points), as the means above."""
  region = summary["region"]
  cols = [
      (f"student − {m} {g}", [100 * v for v in region[f"student_minus_{m}"][g]["values"]])
      for m, groups in (("teacher", ("all", "base", "novel")), ("control", ("all", "novel")))
      if f"student_minus_{m}" in region
      for g in groups
  ]
  for table, label in (
      ("detection", "ensemble"),
      ("detection_without_ensemble", "alone"),
      ("zero_shot_detection", "zero-shot"),
  ):
    det = summary.get(table, {})
    if "student" in det and "teacher" in det:
      s, t = det["student"]["AP50_novel"]["values"], det["teacher"]["AP50_novel"]["values"]
      cols.append((f"novel AP50 student − teacher ({label})", [a - b for a, b in zip(s, t)]))
  lines = [
      "Per seed (points)",
      "",
      "| seed | " + " | ".join(name for name, _ in cols) + " |",
      "|---" * (len(cols) + 1) + "|",
  ]
  for i, seed in enumerate(summary["seeds"]):
    lines.append(f"| {seed} | " + " | ".join(f"{v[i]:+.1f}" for _, v in cols) + " |")
  return lines


def verdict(summary: dict) -> dict:
  """The issue's targets, checked on the means (se: the mean of the per-seed paired se)."""
  region, det = summary["region"], summary.get("detection", {})
  out = {}
  for other in ("teacher", "control"):
    key = f"student_minus_{other}"
    if key in region:
      d, se = region[key]["all"]["mean"], region[key]["se_all"]["mean"]
      out[f"region_student_beats_{other}_by_3se"] = bool(d >= 3 * se)
  if "student" in det and "teacher" in det:
    gap = det["student"]["AP50_novel"]["mean"] - det["teacher"]["AP50_novel"]["mean"]
    out["novel_ap50_student_minus_teacher_points"] = round(gap, 2)  # AP50s are percent
    out["novel_ap50_student_beats_teacher_by_3_points"] = bool(gap >= 3.0)
  for table, key in (
      ("detection_without_ensemble", "without_ensemble"),
      ("zero_shot_detection", "zero_shot"),
  ):
    res = summary.get(table, {})  # informative only: the claim is the configured detector's
    if "student" in res and "teacher" in res:
      gap = res["student"]["AP50_novel"]["mean"] - res["teacher"]["AP50_novel"]["mean"]
      out[f"{key}_novel_ap50_student_minus_teacher_points"] = round(gap, 2)
  return out


def _figures(workdir: str, summary: dict, seed_dirs: list[str]) -> None:
  """Bar chart over seeds, example detections and loss curves copied up from the first seed."""
  region, n = summary["region"], summary["num_seeds"]
  groups = ("base", "novel", "all")
  models = [m for m in REGION_MODELS if m in region]
  series = {m: [100 * region[m][g]["mean"] for g in groups] for m in models}
  errors = {
      m: [100 * (region[m][g]["std"] if n > 1 else region[m]["se_" + g]["mean"]) for g in groups]
      for m in models
  }
  visualize.bar_chart(
      groups,
      series,
      errors,
      ylabel="region top-1 (%)",
      title=f"zero-shot region recognition, GT boxes ({n} seed(s))",
      path=os.path.join(workdir, "region_recognition.png"),
  )
  first = seed_dirs[0]
  for src, dst in (
      ("pretrain/loss_regionclip.png", "loss_regionclip.png"),
      ("pretrain/loss_teacher.png", "loss_teacher.png"),
      ("pretrain/loss_control.png", "loss_control.png"),
      ("finetune_student/examples.png", "detections_student.png"),
      ("finetune_teacher/examples.png", "detections_teacher.png"),
  ):
    if os.path.exists(os.path.join(first, src)):
      shutil.copyfile(os.path.join(first, src), os.path.join(workdir, dst))


def run(config, workdir: str | None = None) -> dict:
  workdir = os.path.abspath(
      workdir
      or config.workdir
      or os.path.join(
          tempfile.gettempdir(), "regionclip_jax", f"pipeline_{config.get('preset') or 'custom'}"
      )
  )
  os.makedirs(workdir, exist_ok=True)
  with compilation_cache(os.path.join(workdir, "xla_cache")):
    return _run(config, workdir)


def _run(config, workdir: str) -> dict:
  print(f"[pipeline] workdir: {workdir}; seeds {list(config.seeds)}", flush=True)
  t0 = time.time()
  per_seed, dirs = [], []
  for seed in config.seeds:
    d = os.path.join(workdir, f"seed_{seed}")
    dirs.append(d)
    per_seed.append(run_seed(config, int(seed), d))
  summary = summarize(per_seed)
  table = format_table(summary)
  result = {
      "preset": config.get("preset", ""),
      "seeds": list(config.seeds),
      "summary": summary,
      "targets": verdict(summary),
      "per_seed": per_seed,
      "wall_seconds": round(time.time() - t0, 1),
      "date": time.strftime("%Y-%m-%d", time.gmtime()),
  }
  with files.atomic_open(os.path.join(workdir, "metrics.json")) as f:
    json.dump(result, f, indent=1)
  files.write_text(os.path.join(workdir, "table.md"), table + "\n")
  _figures(workdir, summary, dirs)
  print(table, flush=True)
  print(f"[pipeline] targets: {json.dumps(result['targets'])}", flush=True)
  print(
      f"[pipeline] done in {result['wall_seconds']:.0f}s; {os.path.join(workdir, 'metrics.json')}",
      flush=True,
  )
  return result
