"""Concept (class-name) embeddings for a CLIP text tower, as RegionCLIP's tool computes them.

    python -m regionclip_jax.tools.extract_concept_features --checkpoint=PATH \
        --concepts=FILE.txt --output=FILE.npy [--batch_size=256] [--source=...] \
        [--on_error=strict|skip]

Output: [num_concepts, D] float32, the *unnormalised* mean over the 81 prompt templates of the
text embeddings (names cleaned and prompts filled as in `regionclip_jax.models.prompts`), and
beside it FILE.names.txt, the names embedded, one a line in row order. The concepts file holds
one name per line, or "name,count" rows (name before the first comma).

Bad lines (not UTF-8, an empty name, over 1000 characters, a name that another line already
gives up to case / "_" / brackets, a name whose prompts do not fit the text tower's context):
`--on_error=strict` (default) stops with one line naming the file, the line and the problem;
`skip` warns for the first 10, embeds the rest and prints the counts. Blank lines are skipped in
both modes. Both files are written atomically, the .npy (what readers look for) last.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any, Callable, NamedTuple

import numpy as np

from regionclip_jax import files
from regionclip_jax.data.validation import IssueCounter, check_policy, handle, read_names_file
from regionclip_jax.models import checkpoints, prompts

log = logging.getLogger(__name__)
HINT = "rerun with --on_error=skip to leave such lines out and count them"


class Extracted(NamedTuple):
  embeddings: np.ndarray  # [C, D] float32
  names: list[str]  # row order
  issues: IssueCounter
  blank_lines: int


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m regionclip_jax.tools.extract_concept_features",
      description=__doc__.split("\n\n")[0],
      epilog=__doc__.split("\n\n")[-1],
  )
  p.add_argument("--checkpoint", required=True, help="any checkpoint `clip.load` reads")
  p.add_argument("--concepts", required=True, help="text file, one concept per line")
  p.add_argument("--output", required=True, help=".npy file to write")
  p.add_argument("--batch_size", type=int, default=256, help="prompts per text-tower call")
  p.add_argument("--source", choices=checkpoints.SOURCES, default=None)
  p.add_argument("--part", choices=("student", "teacher"), default="student")
  p.add_argument("--text_from", default=None)
  p.add_argument(
      "--on_error", choices=("strict", "skip"), default="strict", help="a bad line: stop, or skip"
  )
  return p


def concept_key(name: str) -> str:
  """Names with this key give the same prompts (the tokenizer lower-cases): one row each."""
  return " ".join(prompts.clean_concept_name(name).replace("+", " ").lower().split())


def names_path(output: str) -> str:
  return output[: -len(".npy")] + ".names.txt"


def _too_long(model, names: list[str]) -> list[bool]:
  """Whether a name's longest prompt overflows the text context (the tokenizer would cut it)."""
  ctx = model.config.text.context_length
  lengths = np.count_nonzero(model.tokenize(list(prompts.TEMPLATES), ctx + 1), axis=1)
  longest = prompts.TEMPLATES[int(np.argmax(lengths))]
  filled = [prompts.apply_template(longest, prompts.clean_concept_name(n)) for n in names]
  return list(model.tokenize(filled, ctx + 1)[:, ctx] != 0)


def extract(
    checkpoint: str,
    concepts: str,
    output: str,
    batch_size: int = 256,
    source: str | None = None,
    part: str = "student",
    text_from: str | None = None,
    progress: bool = True,
    on_error: str = "strict",
    warn: Callable[[str], Any] | None = None,
) -> Extracted:
  """Writes `output` (.npy appended if missing) and its names file; bad lines per `on_error`."""
  check_policy(on_error)
  output = output if output.endswith(".npy") else output + ".npy"
  issues = IssueCounter(os.path.basename(concepts), warn=warn or _warn)
  lines, blank = read_names_file(
      concepts, policy=on_error, counter=issues, key=concept_key, hint=HINT
  )
  model = checkpoints.load(checkpoint, source=source, part=part, text_from=text_from)
  kept = []
  for (number, name), long in zip(lines, _too_long(model, [n for _, n in lines])):
    if long:
      ctx = model.config.text.context_length
      detail = f"{name[:40]!r}... prompts exceed the {ctx}-token context"
      handle(on_error, issues, "name_too_long", f"{concepts} line {number}", detail, HINT)
    else:
      kept.append((number, name))
  if not kept:
    raise ValueError(f"{concepts}: no concept name left to embed ({issues.report()})")
  names = [n for _, n in kept]
  log.info(
      "extract_concept_features: %d concepts x %d templates = %d prompts",
      len(names),
      len(prompts.TEMPLATES),
      len(names) * len(prompts.TEMPLATES),
  )
  emb = prompts.concept_embeddings(
      model.encode_text, names, model.tokenize, batch_size, progress=progress
  ).astype(np.float32)
  bad = np.flatnonzero(~np.all(np.isfinite(emb), axis=1))
  if bad.size:
    number, name = kept[int(bad[0])]
    raise checkpoints.CheckpointError(
        f"{checkpoint}: the text tower gives non-finite embeddings ({bad.size} of {len(names)} "
        f"concepts, first {name!r} of {concepts} line {number}): nothing written"
    )
  # a stale .npy beside the new names file would pair rows with the wrong names
  if os.path.exists(output):
    os.remove(output)
  files.write_text(names_path(output), "".join(n + "\n" for n in names))
  files.save_npy(output, emb)
  return Extracted(emb, names, issues, blank)


def _warn(message: str) -> None:
  print(f"extract_concept_features: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  args = build_parser().parse_args(argv)
  start = time.time()
  try:
    got = extract(
        args.checkpoint,
        args.concepts,
        args.output,
        args.batch_size,
        args.source,
        args.part,
        args.text_from,
        on_error=args.on_error,
    )
  except (checkpoints.CheckpointError, OSError, ValueError) as e:
    print(f"extract_concept_features: error: {e}", file=sys.stderr)
    return 2
  output = args.output if args.output.endswith(".npy") else args.output + ".npy"
  skipped = got.issues.total()
  print(
      f"extract_concept_features: wrote {output} {got.embeddings.shape} float32 and "
      f"{names_path(output)} in {time.time() - start:.1f}s; {len(got.names)} concepts embedded, "
      f"{skipped} line(s) skipped, {got.blank_lines} blank"
  )
  if skipped:
    print(got.issues.report())
  return 0


if __name__ == "__main__":
  sys.exit(main())
