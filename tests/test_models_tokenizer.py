"""Tokenizer ids must equal OpenAI's `simple_tokenizer` (clip-anytorch wheel, imported by path)."""

import importlib.util
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regionclip_jax.models import tokenizer


@pytest.fixture(scope="module")
def reference():
  spec = importlib.util.find_spec("clip")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("clip-anytorch is not installed (pip install --no-deps clip-anytorch)")
  pytest.importorskip("ftfy")
  path = os.path.join(next(iter(spec.submodule_search_locations)), "simple_tokenizer.py")
  mspec = importlib.util.spec_from_file_location("_openai_simple_tokenizer", path)
  mod = importlib.util.module_from_spec(mspec)
  mspec.loader.exec_module(mod)
  ref = mod.SimpleTokenizer()

  def encode(text, context_length=77):
    # OpenAI's clip.tokenize(truncate=True), written out (clip/clip.py needs torchvision).
    ids = [49406] + ref.encode(text) + [49407]
    if len(ids) > context_length:
      ids = ids[:context_length]
      ids[-1] = 49407
    out = np.zeros(context_length, np.int64)
    out[: len(ids)] = ids
    return out

  return encode


TEXTS = [
    "a photo of a cat.",
    "A PHOTO OF A DOG",
    "there is a red circle and a blue star in the scene",
    "it's the dog's bone, isn't it? they'll see; we'd go",
    "café naïve résumé Ünïcödé",
    "Fish &amp; chips &lt;3",
    "日本語のテキスト",
    "123 4567 3.14 1e-5",
    "emoji 😀👍🏽",
    "A   b\tc\nd  ",
    "hyphen-ated_words (with) parens+plus",
    "",
    "   ",
    "a" * 300,
    "!!!???...",
    "<|endoftext|> inside",
    "a photo of a {}.".format("traffic light"),
    "itap of a hot dog.",
    "Mr. O'Neil's ＦＵＬＬＷＩＤＴＨ",
    "sep\x1cchars\x1d and\u00a0nbsp\u3000ideographic\u2028line",
    "İstanbul ß ǅ",
    "a\u0345b \u0345 dropped by OpenAI",
]


def test_ids_match_openai(reference):
  ours = tokenizer.tokenize(TEXTS)
  assert ours.shape == (len(TEXTS), 77) and ours.dtype == np.int32
  for text, row in zip(TEXTS, ours):
    np.testing.assert_array_equal(row, reference(text), err_msg=repr(text))


@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
# Unassigned code points (Cn) are left out: whether one counts as a letter depends on the Unicode
# version of each regex engine (OpenAI's `regex` package vs the Rust `tokenizers`), not on us.
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cn")), max_size=60))
def test_ids_match_openai_random_text(reference, text):
  np.testing.assert_array_equal(tokenizer.tokenize([text])[0], reference(text), err_msg=repr(text))


def test_truncation_keeps_eot_and_pads_with_zero(reference):
  long = " ".join(["word"] * 200)
  row = tokenizer.tokenize(long)[0]
  assert row[0] == 49406 and row[-1] == 49407 and (row != 0).all()
  np.testing.assert_array_equal(row, reference(long))
  short = tokenizer.tokenize(["a cat"], context_length=16)[0]
  assert short.shape == (16,) and (short[4:] == 0).all() and short[3] == 49407
  cut = tokenizer.tokenize([long], context_length=8)[0]
  np.testing.assert_array_equal(cut, reference(long, 8))


def test_tokenizer_is_cached():
  tok = tokenizer.get_tokenizer()
  assert tok is tokenizer.get_tokenizer()  # one instance per process
  built = tokenizer._build_dir(tokenizer.BPE_PATH)
  assert (built / "tokenizer.json").exists()  # later processes skip the slow->fast conversion
  assert tok.convert_tokens_to_ids("<|endoftext|>") == 49407


def test_vocab_table_matches_file_size():
  vocab, merges = tokenizer._vocab_and_merges(tokenizer.BPE_PATH)
  assert len(vocab) == 49408 and len(merges) == 48894
  assert vocab["<|startoftext|>"] == 49406 and vocab["a</w>"] == 320


_RACE = """
import threading
from regionclip_jax.models import tokenizer
errors = []
def first_call():
  try:
    tokenizer.tokenize(["a photo of a cat"], 16)
  except Exception as e:  # the race shows as an ImportError from transformers' lazy module
    errors.append(repr(e))
threads = [threading.Thread(target=first_call) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print("ERRORS", errors)
"""


def test_first_tokenizer_calls_from_many_threads_do_not_race():
  """grain workers start several read threads that all build the tokenizer on their first batch."""
  import subprocess
  import sys

  res = subprocess.run([sys.executable, "-c", _RACE], capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "ERRORS []" in res.stdout, res.stdout[-2000:]
