"""Zero-shot region recognition of the pretraining stages' models (docs/design.md,
"Pretraining"): top-1 over the concept pool with GT boxes on held-out shapes-world scenes,
teacher vs. student [vs. control], base / novel, the paired student differences, the figures.

Reads every model from the workdir (or the config's checkpoints), so it runs after the stages
that wrote them.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from regionclip_jax.evaluation import visualize
from regionclip_jax.evaluation.region_metrics import paired_difference
from regionclip_jax.models import clip as clip_lib
from regionclip_jax.pretrain import sources
from regionclip_jax.pretrain.common import (
    control_path,
    load_clip,
    log,
    region_kw,
    student_path,
    teacher_path,
    wants_control,
)
from regionclip_jax.pretrain.concept_pool import concept_pool
from regionclip_jax.pretrain.tokens import make_tokenize
from regionclip_jax.pretrain.zero_shot import evaluate_regions, make_region_logits_fn


def evaluate(config, models: dict, eval_source, concept_emb, base_ids, novel_ids) -> dict:
  """Zero-shot region top-1 with GT boxes for each (name -> (CLIPConfig, host params)); when a
  "student" is among them, also its paired difference to every other model (same regions):
  out["student_minus_<name>"] = {all, se_all, base, se_base, novel, se_novel}."""
  bs = min(config.eval.batch_size, len(eval_source))
  out, outcomes = {}, {}
  for name, (cfg, params) in models.items():
    fn = make_region_logits_fn(clip_lib.CLIP(cfg), region_kw(config))
    out[name], outcomes[name] = evaluate_regions(
        fn,
        params,
        sources.scene_batches(config, eval_source, bs),
        concept_emb,
        base_ids,
        novel_ids,
        return_correct=True,
    )
  if "student" in outcomes:
    correct_s, labels = outcomes["student"]
    groups = {
        "all": np.ones(labels.shape, bool),
        "base": np.isin(labels, base_ids),
        "novel": np.isin(labels, novel_ids),
    }
    for other in [m for m in outcomes if m != "student"]:
      diff = {}
      for g, sel in groups.items():
        diff[g], diff[f"se_{g}"] = paired_difference(correct_s[sel], outcomes[other][0][sel])
      out[f"student_minus_{other}"] = diff
  return out


def format_region_table(acc: dict, num_concepts: int) -> str:
  """Printable table of `evaluate`'s output (accuracies and paired differences in points)."""
  lines = [
      f"[pretrain] zero-shot region recognition, GT boxes, held-out scenes (top-1 over "
      f"{num_concepts} concepts, % +- 1 se):"
  ]
  for name, a in acc.items():
    if name.startswith("student_minus_"):
      lines.append(
          f"  {name:22s}"
          + "  ".join(
              f"{g} {100 * a[g]:+6.1f} +- {100 * a['se_' + g]:.1f}"
              for g in ("all", "base", "novel")
          )
          + "  (paired)"
      )
    else:
      lines.append(
          f"  {name:22s}"
          + "  ".join(
              f"{g} {100 * a[g]:6.1f} +- {100 * a['se_' + g]:.1f}" for g in ("all", "base", "novel")
          )
          + f"  (n = {a['n_all']} regions)"
      )
  return "\n".join(lines)


def figures(workdir: str, acc: dict) -> None:
  """region_recognition.png (bars +- 1 se) and loss curves of every stage that logged any."""
  if jax.process_index() != 0:
    return
  models = {k: v for k, v in acc.items() if not k.startswith("student_minus_")}
  visualize.region_recognition_chart(
      models,
      title="zero-shot region recognition (GT boxes)",
      path=os.path.join(workdir, "region_recognition.png"),
  )
  for stage, sub in (("regionclip", ""), ("teacher", "teacher"), ("control", "control")):
    log_file = os.path.join(workdir, sub, "tensorboard", "metrics.jsonl")
    if os.path.exists(log_file):
      visualize.loss_curves(
          log_file, title=f"{stage} training", path=os.path.join(workdir, f"loss_{stage}.png")
      )


def enabled(config) -> bool:
  """GT boxes exist in the shapes world only."""
  return bool(config.eval.enabled) and config.data.source == "shapes_world"


def run(config, workdir: str) -> dict | None:
  """Teacher, student [and control] from the workdir -> `evaluate`'s table (printed, plotted),
  or None when evaluation is off or there are no GT boxes."""
  if not enabled(config):
    return None
  eval_source = sources.shapes_eval_source(config)
  teacher = load_clip(teacher_path(config, workdir))
  # the pool the student was trained with: the same teacher, names and prompts
  concept_emb = concept_pool(config, *teacher, make_tokenize(config), list(eval_source.concepts))
  models = {"teacher": teacher, "student": load_clip(student_path(workdir))}
  if wants_control(config):
    models["control"] = load_clip(control_path(workdir))
  acc = evaluate(
      config,
      models,
      eval_source,
      concept_emb,
      eval_source.base_indices,
      eval_source.novel_indices,
  )
  log(format_region_table(acc, concept_emb.shape[0]))
  figures(workdir, acc)
  return acc
