"""Concept (class-name) embeddings for a CLIP text tower, as RegionCLIP's tool computes them.

    python -m regionclip_jax.tools.extract_concept_features --checkpoint=PATH \
        --concepts=FILE.txt --output=FILE.npy [--batch_size=256] [--source=...]

Output: [num_concepts, D] float32, the *unnormalised* mean over the 81 prompt templates of the
text embeddings (names cleaned and prompts filled as in `regionclip_jax.models.prompts`).
The concepts file holds one name per line, or "name,count" rows (name before the first comma).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np

from regionclip_jax.models import checkpoints, prompts

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m regionclip_jax.tools.extract_concept_features",
      description=__doc__.split("\n\n")[0],
  )
  p.add_argument("--checkpoint", required=True, help="any checkpoint `clip.load` reads")
  p.add_argument("--concepts", required=True, help="text file, one concept per line")
  p.add_argument("--output", required=True, help=".npy file to write")
  p.add_argument("--batch_size", type=int, default=256, help="prompts per text-tower call")
  p.add_argument("--source", choices=checkpoints.SOURCES, default=None)
  p.add_argument("--part", choices=("student", "teacher"), default="student")
  p.add_argument("--text_from", default=None)
  return p


def extract(
    checkpoint: str,
    concepts: str,
    output: str,
    batch_size: int = 256,
    source: str | None = None,
    part: str = "student",
    text_from: str | None = None,
    progress: bool = True,
) -> np.ndarray:
  """Writes and returns the [C, D] float32 concept embeddings."""
  names = prompts.read_concepts_file(concepts)
  model = checkpoints.load(checkpoint, source=source, part=part, text_from=text_from)
  total = len(names) * len(prompts.TEMPLATES)
  log.info(
      "extract_concept_features: %d concepts x %d templates = %d prompts",
      len(names),
      len(prompts.TEMPLATES),
      total,
  )
  emb = prompts.concept_embeddings(
      model.encode_text, names, model.tokenize, batch_size, progress=progress
  )
  out_dir = os.path.dirname(os.path.abspath(output))
  os.makedirs(out_dir, exist_ok=True)
  np.save(output, emb.astype(np.float32))
  return emb


def main(argv: list[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  args = build_parser().parse_args(argv)
  start = time.time()
  try:
    emb = extract(
        args.checkpoint,
        args.concepts,
        args.output,
        args.batch_size,
        args.source,
        args.part,
        args.text_from,
    )
  except (checkpoints.CheckpointError, FileNotFoundError, ValueError) as e:
    print(f"extract_concept_features: error: {e}", file=sys.stderr)
    return 2
  print(
      f"extract_concept_features: wrote {args.output} {emb.shape} float32 "
      f"in {time.time() - start:.1f}s"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
