"""Concept pool extraction: matching rules, thresholds, file format, CLI."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from regionclip_jax.data.concepts import (
    ConceptMatcher,
    default_vocabulary,
    extract_concepts,
    main,
    plural_forms,
)
from regionclip_jax.data.validation import read_names


def test_matcher_longest_phrase_plurals_and_cleaning():
  m = ConceptMatcher(
      [
          "dog",
          "hot_dog",
          "person",
          "bus",
          "glass",
          "glasses",
          "teddy bear",
          "cherry",
          "bow_(weapon)",
      ]
  )
  assert m.find("Two hot dogs and a dog.") == ["hot dog", "dog"]
  assert m.find("people on buses with glasses") == ["person", "bus", "glasses"]
  assert m.find("a glass of cherries, a teddy bears' picnic") == ["glass", "cherry", "teddy bear"]
  assert m.find("a bow weapon") == ["bow weapon"]
  assert m.find("doghouse") == []  # whole words only


def test_default_vocabulary_covers_coco_lvis_shapes():
  v = default_vocabulary()
  assert "person" in v and "hexagon" in v and "aerosol can" in v
  assert len(v) == len(set(v)) and len(v) > 1200
  assert all(n == n.lower() and "_" not in n and "(" not in n for n in v)


def test_extract_threshold_and_order():
  caps = ["a dog", "two dogs", "a dog and a cat", "a cat", "a zebra", "a dog dog dog"]
  out = extract_concepts(caps, ["dog", "cat", "zebra"], min_count=2)
  assert out == [("dog", 4), ("cat", 2)]  # counted once per caption


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.sampled_from(["dog", "cat", "hot dog", "a", "the", "and", "red", "dogs"]), max_size=12
    )
)
def test_matches_are_vocabulary_names(words):
  m = ConceptMatcher(["dog", "cat", "hot dog"])
  found = m.find(" ".join(words))
  assert set(found) <= {"dog", "cat", "hot dog"}
  assert len(found) <= len(words)
  assert found.count("cat") == words.count("cat")


def test_plural_forms():
  assert plural_forms("box") >= {"box", "boxes"} and "buses" in plural_forms("bus")
  assert "fireman" in plural_forms("fireman") and "firemen" in plural_forms("fireman")


def test_cli_writes_name_count_rows(tmp_path, capsys):
  (tmp_path / "c.json").write_text(
      json.dumps(
          {
              "annotations": [
                  {"image_id": 1, "caption": "A red star next to a ring."},
                  {"image_id": 2, "caption": "two stars"},
                  {"image_id": 3, "caption": "a ring"},
                  {"image_id": 4, "caption": "a person"},
              ]
          }
      )
  )
  (tmp_path / "c.jsonl").write_text(json.dumps({"image": "x", "captions": ["a star"]}) + "\n")
  (tmp_path / "extra.txt").write_text("red star,5\n")
  out = main(
      [
          "--captions",
          str(tmp_path / "c.json"),
          "--captions",
          str(tmp_path / "c.jsonl"),
          "--vocabulary",
          str(tmp_path / "extra.txt"),
          "--output",
          str(tmp_path / "concepts.txt"),
          "--min_count",
          "2",
      ]
  )
  assert out == [("ring", 2), ("star", 2)]  # "red star" (1) is its own concept; ties by name
  assert (tmp_path / "concepts.txt").read_text() == "ring,2\nstar,2\n"
  assert read_names(tmp_path / "concepts.txt") == ["ring", "star"]
  assert "2 concepts" in capsys.readouterr().out
  with pytest.raises(FileNotFoundError, match="captions file not found"):
    main(["--captions", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o.txt")])
