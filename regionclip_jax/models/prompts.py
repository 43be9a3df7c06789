"""Prompt templates and concept (class-name) text embeddings, as RegionCLIP builds them.

A concept embedding is the *unnormalised* mean, over the 81 templates below, of the CLIP text
embeddings of the prompted name (docs/design.md, "Pretraining"); it is L2-normalised only where
it is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

# The official list: "{}." followed by CLIP's 80 ImageNet templates, in RegionCLIP's order
# (the order only changes float summation order, kept for bit-closeness to the official tool).
TEMPLATES: tuple[str, ...] = (
    "{}.",
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

Concept = str | Sequence[str]  # one name, or synonyms whose prompts are pooled together


def clean_concept_name(name: str) -> str:
  """LVIS-style name cleaning: "_" -> space, "(" and ")" deleted (their content kept)."""
  return name.replace("_", " ").replace("(", "").replace(")", "").strip()


def apply_template(template: str, name: str) -> str:
  """Fills a template the official way: "," deleted and "+" -> space inside the name."""
  return template.replace("{}", name.replace(",", "").replace("+", " "))


def prompts_for(name: Concept, templates: Sequence[str] = TEMPLATES) -> list[str]:
  """All prompts of one concept (a name or a list of synonyms), names cleaned first."""
  names = [name] if isinstance(name, str) else list(name)
  if not names:
    raise ValueError("prompts_for: empty synonym list")
  return [apply_template(t, clean_concept_name(n)) for n in names for t in templates]


def concept_embeddings(
    encode_text_fn: Callable[[np.ndarray], np.ndarray],
    names: Sequence[Concept],
    tokenize_fn: Callable[[list[str]], np.ndarray],
    batch_size: int = 256,
    *,
    templates: Sequence[str] = TEMPLATES,
    progress: bool = False,
) -> np.ndarray:
  """Unnormalised mean over templates of the text embeddings of each concept.

  Args:
    encode_text_fn: tokens [B, L] int32 -> embeddings [B, D] (unnormalised).
    names: C concepts (a name, or a list of synonyms pooled over all their prompts).
    tokenize_fn: list of B strings -> tokens [B, L] int32.
    batch_size: prompts per call; the last batch is padded to this size so that a jitted
      `encode_text_fn` compiles once per token width (`LoadedCLIP.encode_text` cuts each batch
      to a multiple of 16 columns: a few widths at most).
    progress: log one line per batch.
  Returns:
    [C, D] float32.
  """
  if batch_size < 1:
    raise ValueError(f"concept_embeddings: batch_size must be >= 1, got {batch_size}")
  if len(names) == 0:
    raise ValueError("concept_embeddings: no concept names given")
  prompts: list[str] = []
  owner: list[int] = []
  for i, name in enumerate(names):
    p = prompts_for(name, templates)
    prompts.extend(p)
    owner.extend([i] * len(p))
  owner_arr = np.asarray(owner)

  sums = None
  num_batches = -(-len(prompts) // batch_size)
  for b in range(num_batches):
    chunk = prompts[b * batch_size : (b + 1) * batch_size]
    n = len(chunk)
    tokens = np.asarray(tokenize_fn(chunk))
    if n < batch_size:
      tokens = np.concatenate([tokens, np.repeat(tokens[-1:], batch_size - n, 0)], 0)
    emb = np.asarray(encode_text_fn(tokens), dtype=np.float64)[:n]
    if sums is None:
      sums = np.zeros((len(names), emb.shape[-1]), np.float64)
    # accumulate in float64: with hundreds of prompts per class the order of the sum matters
    np.add.at(sums, owner_arr[b * batch_size : b * batch_size + n], emb)
    if progress:
      log.info(
          "concept_embeddings: batch %d/%d (%d prompts)",
          b + 1,
          num_batches,
          min((b + 1) * batch_size, len(prompts)),
      )
  counts = np.bincount(owner_arr, minlength=len(names)).astype(np.float64)
  return (sums / counts[:, None]).astype(np.float32)


def similar_concepts(
    embeddings: np.ndarray,
    names: Sequence[str],
    threshold: float = 0.95,
    limit: int | None = None,
) -> list[tuple[str, str, float]]:
  """Pairs of concepts whose text embeddings are near-duplicates (cosine >= threshold).

  A classifier built on these embeddings cannot separate such a pair whatever the image side
  learns, so region recognition between them is at chance. Args: embeddings [C, D] (normalised
  or not), names C strings; `limit`: keep only the closest that many (threshold -1 with a limit:
  the closest pairs whatever their cosine). Returns (name_a, name_b, cosine) sorted by decreasing
  cosine.
  """
  emb = np.asarray(embeddings, np.float64)
  if emb.ndim != 2 or emb.shape[0] != len(names):
    raise ValueError(
        f"similar_concepts: embeddings must be [{len(names)}, D] for "
        f"{len(names)} names, got {emb.shape}"
    )
  unit = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
  a, b = np.triu_indices(len(names), k=1)
  cos = (unit @ unit.T)[a, b]
  keep = np.flatnonzero(cos >= threshold)
  keep = keep[np.argsort(-cos[keep], kind="stable")][:limit]
  return [(names[a[k]], names[b[k]], float(cos[k])) for k in keep]
