"""Concept pool from captions, with no model download: match captions against a candidate
vocabulary (COCO + LVIS category names + the shapes world, plus any user list), count, keep the
frequent ones, write `concepts.txt` ("name,count" rows, read by `data.validation.read_names`).

The official pool came from a noun parser (frequency >= 100: 4,764 concepts from COCO Captions);
a fixed candidate vocabulary is the offline stand-in: it finds only listed concepts, but every
concept it finds is a nameable object class. Names are cleaned the official way ("_" -> space,
parentheses dropped, content kept). Matching is on lower-case words, longest phrase first
("hot dog" is not also a "dog"), and accepts regular and common irregular plurals.

CLI: python -m regionclip_jax.data.concepts --captions=FILE [--captions=FILE ...] \
       --output=concepts.txt [--min_count=100] [--vocabulary=extra.txt] [--no_default_vocabulary]
Caption files: COCO Captions json, JSONL ({"captions": [...]}), or plain text (one per line).
A user-given concept list replaces extraction altogether: pass it to training as the concepts file.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
from typing import Iterable, Sequence

from regionclip_jax import files
from regionclip_jax.data import categories as cats
from regionclip_jax.data.coco import load_json
from regionclip_jax.data.shape_masks import SHAPES
from regionclip_jax.data.validation import read_names
from regionclip_jax.models.prompts import clean_concept_name

_IRREGULAR = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "foot": "feet",
    "tooth": "teeth",
    "goose": "geese",
    "knife": "knives",
    "leaf": "leaves",
    "shelf": "shelves",
    "wolf": "wolves",
    "calf": "calves",
    "sheep": "sheep",
    "deer": "deer",
    "fish": "fish",
    "skis": "skis",
    "scissors": "scissors",
    "glasses": "glasses",
}
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def default_vocabulary(sources: Sequence[str] = ("coco", "lvis", "shapes")) -> list[str]:
  """Candidate concept names (cleaned, lower-case, de-duplicated, first-seen order)."""
  names: list[str] = []
  for s in sources:
    if s == "coco":
      names += list(cats.COCO_NAMES)
    elif s == "lvis":
      names += [c["name"] for c in cats.read_lvis_v1_categories()]
    elif s == "shapes":
      names += list(SHAPES)  # every shape the generator can draw
    else:
      raise ValueError(f"unknown vocabulary source {s!r}; expected coco, lvis or shapes")
  return _dedupe(clean_concept_name(n).lower() for n in names)


def _dedupe(names: Iterable[str]) -> list[str]:
  seen, out = set(), []
  for n in names:
    n = " ".join(n.split())
    if n and n not in seen:
      seen.add(n)
      out.append(n)
  return out


def plural_forms(word: str) -> set[str]:
  """The word and its likely plurals (regular English rules + a few irregulars)."""
  out = {word}
  if word in _IRREGULAR:
    out.add(_IRREGULAR[word])
  if word.endswith(("s", "x", "z", "ch", "sh")):
    out.add(word + "es")
  elif word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
    out.add(word[:-1] + "ies")
  elif word.endswith("man"):
    out.add(word[:-3] + "men")
  else:
    out.add(word + "s")
  if word.endswith("o"):
    out.add(word + "es")
  return out


class ConceptMatcher:
  """Finds vocabulary concepts in text: longest word sequence first, plurals folded."""

  def __init__(self, vocabulary: Sequence[str]):
    self.vocabulary = _dedupe(clean_concept_name(v).lower() for v in vocabulary)
    if not self.vocabulary:
      raise ValueError("concept vocabulary is empty")
    self._phrases: dict[tuple[str, ...], str] = {}
    for name in self.vocabulary:
      words = tuple(_WORD.findall(name))
      if not words:
        continue
      for last in plural_forms(words[-1]):
        self._phrases.setdefault(words[:-1] + (last,), name)
    # Exact names win over another name's plural form (e.g. "glasses" vs "glass").
    for name in self.vocabulary:
      self._phrases[tuple(_WORD.findall(name))] = name
    self.max_len = max(len(p) for p in self._phrases)

  def find(self, text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    found, i = [], 0
    while i < len(words):
      for n in range(min(self.max_len, len(words) - i), 0, -1):
        name = self._phrases.get(tuple(words[i : i + n]))
        if name is not None:
          found.append(name)
          i += n
          break
      else:
        i += 1
    return found


def extract_concepts(
    captions: Iterable[str],
    vocabulary: Sequence[str] | None = None,
    min_count: int = 100,
) -> list[tuple[str, int]]:
  """(name, count) of vocabulary concepts seen in >= `min_count` captions, most frequent first.

  A concept is counted once per caption that mentions it.
  """
  matcher = ConceptMatcher(vocabulary if vocabulary is not None else default_vocabulary())
  counts: collections.Counter = collections.Counter()
  for c in captions:
    counts.update(set(matcher.find(c)))
  return sorted(((n, k) for n, k in counts.items() if k >= min_count), key=lambda x: (-x[1], x[0]))


def write_concepts_file(
    path: str | os.PathLike,
    concepts: Sequence[tuple[str, int]] | Sequence[str],
    with_counts: bool = True,
) -> None:
  """One concept per line, "name,count" when counts are given and wanted."""
  with files.atomic_open(path, "w", encoding="utf-8") as f:
    for c in concepts:
      if isinstance(c, str):
        f.write(f"{c}\n")
      else:
        name, count = c
        if "," in name:
          raise ValueError(
              f"concept name {name!r} contains ',' which the concepts file format reserves"
          )
        f.write(f"{name},{count}\n" if with_counts else f"{name}\n")


def read_captions_file(path: str | os.PathLike) -> list[str]:
  """Captions from a COCO Captions json, a JSONL ("captions"/"caption" per line) or plain text."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"captions file not found: {path}")
  if path.endswith(".json"):
    data = load_json(path)
    if not isinstance(data, dict) or "annotations" not in data:
      raise ValueError(f"{path}: captions json lacks required field 'annotations'")
    return [
        a["caption"]
        for a in data["annotations"]
        if isinstance(a, dict) and isinstance(a.get("caption"), str)
    ]
  out: list[str] = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      if path.endswith(".jsonl"):
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}: line {lineno} is not readable json ({e})") from None
        caps = obj.get("captions", obj.get("caption", [])) if isinstance(obj, dict) else []
        out += [caps] if isinstance(caps, str) else [c for c in caps if isinstance(c, str)]
      else:
        out.append(line)
  return out


def main(argv: Sequence[str] | None = None) -> list[tuple[str, int]]:
  p = argparse.ArgumentParser(description="Build a concept pool (concepts.txt) from captions.")
  p.add_argument(
      "--captions", action="append", required=True, help="captions file (json / jsonl / txt)"
  )
  p.add_argument("--output", required=True)
  p.add_argument("--min_count", type=int, default=100)
  p.add_argument("--vocabulary", action="append", default=[], help="extra candidate names file(s)")
  p.add_argument("--no_default_vocabulary", action="store_true")
  p.add_argument("--no_counts", action="store_true", help="write names only")
  args = p.parse_args(argv)
  vocab = [] if args.no_default_vocabulary else default_vocabulary()
  for v in args.vocabulary:
    vocab += read_names(v, "concepts file")
  captions = [c for path in args.captions for c in read_captions_file(path)]
  concepts = extract_concepts(captions, vocab, args.min_count)
  write_concepts_file(args.output, concepts, with_counts=not args.no_counts)
  print(
      f"{len(concepts)} concepts with >= {args.min_count} captions out of {len(captions)} captions "
      f"-> {args.output}"
  )
  return concepts


if __name__ == "__main__":
  main()
