"""OpenAI CLIP tokenizer (ids identical to OpenAI's `simple_tokenizer`), offline.

Built on transformers' `CLIPTokenizerFast` from the BPE vocabulary shipped in
`regionclip_jax/assets/bpe_simple_vocab_16e6.txt.gz` (MIT, OpenAI). On first use the vocabulary
is expanded into `vocab.json` + `merges.txt`, loaded with `from_pretrained(dir)` (transformers 5:
the file-argument constructor silently yields wrong ids) and re-saved with `tokenizer.json`, in a
cache dir (`$REGIONCLIP_JAX_CACHE`, else `$XDG_CACHE_HOME/regionclip_jax`, else
`~/.cache/regionclip_jax`), so later processes load in well under a second.

Known limit: for code points that one regex engine's Unicode tables list as unassigned and the
other's as letters (OpenAI uses the `regex` package, HF the Rust `tokenizers`), pre-tokenisation
can differ; OpenAI's own ids then depend on the installed `regex` version too.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
import json
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import regex  # transformers' own dependency; its \s is the Unicode class OpenAI's cleaner uses

SOT_ID = 49406
EOT_ID = 49407
BPE_PATH = Path(__file__).resolve().parent.parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2  # OpenAI keeps the first 48,894 merges of the file
_WS = regex.compile(r"\s+")
# OpenAI's pre-tokeniser pattern. Under IGNORECASE a few characters (e.g. U+0345, whose case fold
# is a letter) match none of its branches and OpenAI silently drops them; HF keeps them.
_OPENAI_PAT = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
    r"|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)


def _byte_unicode_table() -> list[str]:
  """256 printable characters standing for the 256 bytes (GPT-2's reversible byte map)."""
  keep = [
      *range(ord("!"), ord("~") + 1),
      *range(ord("¡"), ord("¬") + 1),
      *range(ord("®"), ord("ÿ") + 1),
  ]
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  # OpenAI orders the vocabulary: kept bytes first (in order), then the remapped ones.
  return [table[b] for b in keep] + [table[b] for b in range(256) if b not in keep]


def _vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
  with gzip.open(bpe_path) as f:
    lines = f.read().decode("utf-8").split("\n")
  merges = lines[1 : 1 + _NUM_MERGES]
  chars = _byte_unicode_table()
  tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
  tokens += ["<|startoftext|>", "<|endoftext|>"]
  return {t: i for i, t in enumerate(tokens)}, merges


def _cache_root() -> Path:
  if os.environ.get("REGIONCLIP_JAX_CACHE"):
    return Path(os.environ["REGIONCLIP_JAX_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "regionclip_jax"


def _tokenizer_class():
  """transformers' `CLIPTokenizerFast`, imported on first use (transformers is heavy).

  Only the tokenizer is used, so transformers' advisory "PyTorch was not found" line, printed at
  import on a machine without torch, is noise: it is switched off unless the user set the variable.
  """
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  from transformers import CLIPTokenizerFast

  return CLIPTokenizerFast


def _build_dir(bpe_path: Path) -> Path:
  """Directory with vocab.json / merges.txt / tokenizer.json, written once (atomic rename)."""
  digest = hashlib.sha256(bpe_path.read_bytes()).hexdigest()[:12]
  target = _cache_root() / f"clip_tokenizer_{digest}"
  if (target / "tokenizer.json").exists():
    return target
  CLIPTokenizerFast = _tokenizer_class()
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
  vocab, merges = _vocab_and_merges(bpe_path)
  (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
  (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
  specials = {
      "bos_token": "<|startoftext|>",
      "eos_token": "<|endoftext|>",
      "unk_token": "<|endoftext|>",
      "pad_token": "<|endoftext|>",
      "model_max_length": 77,
  }
  (tmp / "tokenizer_config.json").write_text(json.dumps(specials), encoding="utf-8")
  tok = CLIPTokenizerFast.from_pretrained(str(tmp))
  tok.save_pretrained(str(tmp))
  try:
    os.rename(tmp, target)
  except OSError:  # another process won the race; its copy is identical
    pass
  return target if (target / "tokenizer.json").exists() else tmp


# transformers' lazy imports are not thread-safe: the read threads of a fresh grain worker racing
# to the first tokenizer fail with "cannot import name 'CLIPTokenizerFast'"
_BUILD_LOCK = threading.Lock()


def get_tokenizer(bpe_path: str | None = None):
  """The cached `CLIPTokenizerFast` for the shipped (or given) BPE file (thread-safe)."""
  with _BUILD_LOCK:
    return _get_tokenizer(bpe_path)


@functools.cache
def _get_tokenizer(bpe_path: str | None):
  CLIPTokenizerFast = _tokenizer_class()
  path = Path(bpe_path) if bpe_path else BPE_PATH
  if not path.exists():
    raise FileNotFoundError(f"tokenizer: BPE vocabulary not found at {path}")
  tok = CLIPTokenizerFast.from_pretrained(str(_build_dir(path)))
  if (
      tok.convert_tokens_to_ids("<|startoftext|>") != SOT_ID
      or tok.convert_tokens_to_ids("<|endoftext|>") != EOT_ID
  ):
    raise RuntimeError(
        f"tokenizer: special-token ids are wrong in {_build_dir(path)}; delete that cache dir"
    )
  return tok


def clean_text(text: str) -> str:
  """OpenAI's pre-cleaning: ftfy (if installed), HTML unescape twice, whitespace collapse,
  lower case, and the characters OpenAI's pre-tokeniser drops replaced by a space."""
  try:
    import ftfy

    text = ftfy.fix_text(text)
  except ImportError:
    pass
  text = html.unescape(html.unescape(text)).strip()
  text = _WS.sub(" ", text).strip().lower()
  # Replace what OpenAI's pattern skips by a space: a skipped character separates the pieces
  # around it (as whitespace does) and contributes no id.
  pieces, end = [], 0
  for m in _OPENAI_PAT.finditer(text):
    if m.start() > end and pieces:
      pieces.append(" ")
    pieces.append(m.group())
    end = m.end()
  return "".join(pieces)


def tokenize(texts, context_length: int = 77) -> np.ndarray:
  """texts: str or list[str] -> [B, context_length] int32 OpenAI ids.

  SOT + BPE ids + EOT, padded with 0 (OpenAI's pad). Longer texts are truncated to
  SOT + first (context_length - 2) ids + EOT, i.e. the EOT is always kept.
  """
  if isinstance(texts, str):
    texts = [texts]
  if context_length < 3:
    raise ValueError(
        f"tokenize: context_length must be >= 3 (SOT, a token, EOT), got {context_length}"
    )
  tok = get_tokenizer()
  ids = tok(
      [clean_text(t) for t in texts],
      add_special_tokens=False,
      truncation=True,
      max_length=context_length - 2,
  )["input_ids"]
  out = np.zeros((len(texts), context_length), np.int32)
  for i, row in enumerate(ids):
    row = [SOT_ID] + list(row)[: context_length - 2] + [EOT_ID]
    out[i, : len(row)] = row
  return out
