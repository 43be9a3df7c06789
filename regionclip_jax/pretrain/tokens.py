"""Caption and prompt tokenizers of the pretraining stages: the OpenAI BPE, or a word-hash stand-in
for the shapes world when the BPE cannot be loaded."""

from __future__ import annotations

import re
import zlib

import numpy as np

from regionclip_jax.models.tokenizer import tokenize
from regionclip_jax.pretrain.common import log

SOT, EOT = 49406, 49407  # the OpenAI vocabulary's start / end of text ids


def word_tokenize(texts, context_length: int = 77) -> np.ndarray:
  """Stand-in used only when the BPE tokenizer is unavailable (shapes world): sot, one stable
  hashed id per lower-cased word, eot (the largest id, so EOT pooling finds it), 0 padding."""
  out = np.zeros((len(texts), context_length), np.int32)
  for i, t in enumerate(texts):
    words = re.findall(r"[a-z]+|[^a-z\s]", t.lower())[: context_length - 2]
    ids = [SOT] + [1 + zlib.crc32(w.encode()) % 49000 for w in words] + [EOT]
    out[i, : len(ids)] = ids
  return out


def base_tokenizer(source: str):
  """The OpenAI BPE tokenizer, built once here in the main thread (transformers' lazy imports
  are not safe to trigger first from grain's reader threads)."""
  try:  # the BPE needs its vocabulary file; the shapes world can do without it
    tokenize(["warm up"], context_length=77)
    return tokenize
  except Exception as e:  # noqa: BLE001 - any failure: fall back for the shapes world only
    if source != "shapes_world":
      raise
    log(
        f"[pretrain] warning: BPE tokenizer unavailable ({type(e).__name__}: {e}); using a "
        "word-hash tokenizer (fine for the shapes world, which has its own small vocabulary)"
    )
    return word_tokenize


def with_context(tokenize, context_length: int):
  """Tokens of a fixed length (<= 77; short captions need no 77-token text pass)."""

  def fn(texts, context_length_ignored: int = 77, **kw):
    del context_length_ignored, kw
    return tokenize(list(texts), context_length=context_length)

  return fn


def make_tokenize(config):
  """The stages' tokenizer: `data.context_length` tokens per caption or prompt."""
  return with_context(base_tokenizer(config.data.source), config.data.context_length)
