"""tools.extract_concept_features over corrupted concept files: strict stops naming the line,
skip embeds the good names, counts the bad lines, and writes the names beside the rows."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import test_checkpoints_util as u
from regionclip_jax.data.validation import DataError, read_names
from regionclip_jax.models import checkpoints, prompts
from regionclip_jax.tools import extract_concept_features as ecf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POOL = ["cat", "traffic_light", "bow_(weapon)", "salt+pepper shaker", "zebra", "hot dog"]
# the same concept written another way: same prompts once cleaned and lower-cased
VARIANTS = [
    lambda n: n,
    lambda n: n.upper() + ",12",
    lambda n: "  " + n.replace("_", " ") + " ",
]
BAD_LINES = {
    "not_utf8": b"\xff\xfe cat",
    "empty_name": b" ,17",
    "line_too_long": b"x" * 1001,
    "name_too_long": b" ".join([b"elephant"] * 70),  # prompts past the 77-token context
}
BATCH = len(prompts.TEMPLATES)  # one concept a batch: rows computed as the reference computes them


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
  """The checkpoint loaded once (one jit compile for all examples), with reference rows."""
  ckpt = u.save_openai_state_dict(
      u.torch_clip("rn", seed=3), str(tmp_path_factory.mktemp("m") / "c.pt")
  )
  model = checkpoints.load(ckpt)
  ref = {
      i: prompts.concept_embeddings(model.encode_text, [n], model.tokenize, BATCH)[0]
      for i, n in enumerate(POOL)
  }
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(checkpoints, "load", lambda *a, **k: model)
    yield ckpt, ref


LINE = st.one_of(
    st.tuples(st.just("name"), st.integers(0, len(POOL) - 1), st.integers(0, len(VARIANTS) - 1)),
    st.tuples(st.just("bad"), st.sampled_from(sorted(BAD_LINES)), st.just(0)),
    st.tuples(st.just("blank"), st.sampled_from(["", "   ", "\t"]), st.just(0)),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(LINE, max_size=10), st.booleans())
def test_bad_lines_strict_names_line_skip_embeds_rest(tmp_path_factory, tower, lines, newline):
  ckpt, ref = tower
  d = tmp_path_factory.mktemp("c")
  raw, seen, names, rows, counts, first_read, first_long = [], set(), [], [], {}, None, None
  for number, (what, a, b) in enumerate(lines, 1):
    if what == "name":
      text = VARIANTS[b](POOL[a])
      raw.append(text.encode())
      if a not in seen:
        seen.add(a)
        names.append(text.split(",")[0].strip())
        rows.append(ref[a])
        continue
      a = "duplicate_name"
    elif what == "blank":
      raw.append(a.encode())
      continue
    else:
      raw.append(BAD_LINES[a])
      if a == "name_too_long" and a in seen:  # read as a name: the second one is a duplicate
        a = "duplicate_name"
      seen.add(a)
    counts[a] = counts.get(a, 0) + 1
    if a == "name_too_long":
      first_long = first_long or (number, a)
    else:
      first_read = first_read or (number, a)
  path = d / "concepts.txt"
  path.write_bytes(b"\n".join(raw) + (b"\n" if newline else b""))
  out = str(d / "emb.npy")

  first = first_read or first_long
  if first:
    with pytest.raises(DataError) as e:
      ecf.extract(ckpt, str(path), out, BATCH, progress=False)
    assert f"{path} line {first[0]}: {first[1]}" in str(e.value) and "\n" not in str(e.value)
    assert "--on_error=skip" in str(e.value)
    assert not os.path.exists(out) and not os.path.exists(ecf.names_path(out))

  warned = []
  if not names:
    with pytest.raises(ValueError, match=f"{path}: (holds no names|no concept name left)"):
      ecf.extract(ckpt, str(path), out, BATCH, progress=False, on_error="skip", warn=warned.append)
    assert not os.path.exists(out)
    return
  got = ecf.extract(
      ckpt, str(path), out, BATCH, progress=False, on_error="skip", warn=warned.append
  )
  assert got.names == names and got.issues.counts == counts
  # (a last blank line without a newline after it is no line at all)
  assert got.blank_lines == sum(1 for ln in path.read_bytes().splitlines() if not ln.strip())
  assert len(warned) == sum(counts.values()) and all(str(path) in w for w in warned)
  emb = np.load(out)
  assert emb.shape == (len(names), 64) and emb.dtype == np.float32
  np.testing.assert_allclose(emb, np.stack(rows), rtol=1e-5, atol=1e-6)
  # the names file reads back with the same reader, so rows and names stay aligned
  assert read_names(ecf.names_path(out)) == names


def test_empty_and_missing_files_stop_in_both_modes(tmp_path, tower):
  ckpt, _ = tower
  (tmp_path / "empty.txt").write_bytes(b"")
  (tmp_path / "blank.txt").write_bytes(b"\n  \n\n")
  for mode in ("strict", "skip"):
    for name in ("empty.txt", "blank.txt"):
      with pytest.raises(ValueError, match=f"{name}: holds no names"):
        ecf.extract(ckpt, str(tmp_path / name), str(tmp_path / "o.npy"), on_error=mode)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
      ecf.extract(ckpt, str(tmp_path / "nope.txt"), str(tmp_path / "o.npy"), on_error=mode)
  assert not (tmp_path / "o.npy").exists()


def test_cli_no_traceback_strict_and_skip(tmp_path):
  ckpt = u.save_openai_state_dict(u.torch_clip("rn", seed=4), str(tmp_path / "c.pt"))
  concepts = tmp_path / "c.txt"
  concepts.write_bytes(b"cat\n\xffdog\ncat\nzebra\n")
  out = tmp_path / "e.npy"
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "regionclip_jax.tools.extract_concept_features"]
  cmd += [f"--checkpoint={ckpt}", f"--concepts={concepts}", f"--output={out}", "--batch_size=81"]
  strict = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert strict.returncode == 2 and "Traceback" not in strict.stderr
  assert strict.stderr.strip().splitlines() == [
      f"extract_concept_features: error: {concepts} line 2: not_utf8: byte 0: b'\\xffdog' "
      "(rerun with --on_error=skip to leave such lines out and count them)"
  ]
  assert not out.exists()
  skip = subprocess.run(
      cmd + ["--on_error=skip"], capture_output=True, text=True, env=env, timeout=300
  )
  assert skip.returncode == 0 and "Traceback" not in skip.stderr, skip.stderr
  assert f"warning: {concepts} line 3: duplicate_name: 'cat' as on line 1" in skip.stderr
  assert "2 concepts embedded, 2 line(s) skipped, 0 blank" in skip.stdout
  assert np.load(out).shape == (2, 64)
  assert (tmp_path / "e.names.txt").read_text() == "cat\nzebra\n"


def test_read_names_one_reader_for_concepts_files_and_class_lists(tmp_path):
  f = tmp_path / "concepts.txt"
  f.write_text("# coco concepts\nperson,1200\n\ntraffic_light,130\nhot dog\n bowl , 7\n")
  assert read_names(f) == ["person", "traffic_light", "hot dog", "bowl"]
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    read_names(tmp_path / "nope.txt")
  (tmp_path / "empty.txt").write_text("\n# only a comment\n")
  with pytest.raises(ValueError, match="empty.txt"):
    read_names(tmp_path / "empty.txt")
  (tmp_path / "twice.txt").write_text("cat\ndog\ncat,3\n")
  with pytest.raises(DataError, match=r"twice.txt line 3: duplicate_name: 'cat' as on line 1"):
    read_names(tmp_path / "twice.txt", "vocabulary file")
  (tmp_path / "latin1.txt").write_bytes(b"cat\ncaf\xe9\n")
  with pytest.raises(DataError, match=r"latin1.txt line 2: not_utf8"):
    read_names(tmp_path / "latin1.txt")
