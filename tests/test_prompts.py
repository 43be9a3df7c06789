"""models/prompts: official templates, name cleaning, concept files, template averaging."""

import numpy as np
import pytest

from regionclip_jax.models import prompts


def test_templates_are_the_81_official_ones():
  t = prompts.TEMPLATES
  assert len(t) == 81 and len(set(t)) == 81
  assert t[0] == "{}." and "a photo of a {}." in t and "itap of my {}." in t
  assert all(s.count("{}") == 1 for s in t)


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("traffic_light", "traffic light"),
        ("bow_(weapon)", "bow weapon"),
        ("  dog ", "dog"),
        ("Christmas_tree", "Christmas tree"),
    ],
)
def test_clean_concept_name(raw, clean):
  assert prompts.clean_concept_name(raw) == clean


def test_prompt_filling_drops_commas_and_splits_plus():
  filled = prompts.apply_template("a photo of a {}.", "salt,pepper+shaker")
  assert filled == "a photo of a saltpepper shaker."
  p = prompts.prompts_for("bow_(weapon)")
  assert len(p) == 81 and p[0] == "bow weapon." and p[1] == "a photo of a bow weapon."
  assert len(prompts.prompts_for(["cup", "mug"])) == 162


def test_concept_embeddings_is_the_unnormalised_template_mean():
  """A fake tokenizer / encoder whose embedding is a known function of the prompt text."""
  rng = np.random.default_rng(0)
  table = {}

  def tokenize(texts):
    rows = []
    for s in texts:
      table.setdefault(s, len(table) + 1)
      rows.append([table[s]] + [0] * 3)
    return np.asarray(rows, np.int32)

  vecs = rng.normal(size=(2000, 5)) * 3.0

  calls = []

  def encode(tokens):
    calls.append(tokens.shape)
    return vecs[tokens[:, 0]]

  names = ["cat", ["cup", "mug"], "traffic_light"]
  out = prompts.concept_embeddings(encode, names, tokenize, batch_size=50)
  assert out.shape == (3, 5) and out.dtype == np.float32
  assert all(s == (50, 4) for s in calls)  # last batch padded: one shape, one compile
  for i, name in enumerate(names):
    expect = np.mean([vecs[table[p]] for p in prompts.prompts_for(name)], axis=0)
    np.testing.assert_allclose(out[i], expect, rtol=1e-6, atol=1e-6)
  assert not np.allclose(np.linalg.norm(out, axis=-1), 1.0)  # not normalised
  with pytest.raises(ValueError, match="batch_size"):
    prompts.concept_embeddings(encode, names, tokenize, batch_size=0)


def test_similar_concepts_finds_near_duplicate_text_embeddings():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(4, 32))
  emb[2] = 3.0 * emb[0] + 1e-3 * rng.normal(size=32)  # same direction, other norm
  pairs = prompts.similar_concepts(emb, ["circle", "square", "heart", "star"])
  assert [(a, b) for a, b, _ in pairs] == [("circle", "heart")]
  assert pairs[0][2] == pytest.approx(1.0, abs=1e-4)
  assert prompts.similar_concepts(emb, ["a", "b", "c", "d"], threshold=1.01) == []
  # the closest pairs whatever their cosine, in order, checked against a brute-force loop
  unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
  brute = sorted(
      ((unit[i] @ unit[j], i, j) for i in range(4) for j in range(i + 1, 4)), reverse=True
  )[:3]
  top = prompts.similar_concepts(emb, list("abcd"), threshold=-1.0, limit=3)
  assert [(a, b) for a, b, _ in top] == [("abcd"[i], "abcd"[j]) for _, i, j in brute]
  np.testing.assert_allclose([c for _, _, c in top], [c for c, _, _ in brute], rtol=1e-9)
  with pytest.raises(ValueError, match=r"\[3, D\]"):
    prompts.similar_concepts(emb, ["a", "b", "c"])
