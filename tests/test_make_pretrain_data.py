"""tools/make_pretrain_data: folder + JSONL / CSV captions -> TSV pair or array_record, read back
by the pretraining source; bad rows skipped and counted, or a one-line stop (strict), and never a
partial output. A property test over corrupted inputs."""

import csv
import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from PIL import Image

from configs import pretrain as pretrain_config
from regionclip_jax.data.array_record import ArrayRecordImageText, encode_pair
from regionclip_jax.data.validation import DataError
from regionclip_jax.pretrain import sources
from regionclip_jax.tools import make_pretrain_data as mpd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _jpeg(name: str, size: int) -> bytes:
  import skimage.data

  im = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
  im.thumbnail((size, size))
  buf = io.BytesIO()
  im.save(buf, "JPEG", quality=90)
  return buf.getvalue()


JPEGS = {name: _jpeg(name, 48) for name in PHOTOS}


def _bomb_png() -> bytes:
  """A valid PNG header declaring 100,000 x 100,000 px (PIL refuses it: too many pixels)."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _read_back(paths, fmt):
  """The pretraining source of the converter's output, as configs/pretrain.py:rn50_cc3m plus the
  overrides the converter prints."""
  c = pretrain_config.get_config("rn50_cc3m")
  for flag in mpd.config_overrides(paths, fmt).split():
    key, value = flag[len("--config.") :].split("=", 1)
    c.data[key.split(".", 1)[1]] = value
  return sources.real_source(c)


def _write_captions(path, rows, fmt):
  """rows: dicts of image / caption(s) -> a .jsonl or a .csv file."""
  if fmt == "jsonl":
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  else:
    with open(path, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["image", "caption"])
      for r in rows:
        w.writerow([r["image"], r.get("caption", r.get("captions", [""])[0])])


@pytest.mark.parametrize("captions_fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("fmt", ["tsv", "array_record"])
def test_round_trip(tmp_path, captions_fmt, fmt):
  images = tmp_path / "images" / "sub"
  images.mkdir(parents=True)
  rows = []
  for i, name in enumerate(PHOTOS):
    (images / f"{name}.jpg").write_bytes(JPEGS[name])
    caps = [f"a photo of {name}", f"{name}, {i}"] if captions_fmt == "jsonl" else [f"the {name}"]
    rows.append({"image": f"sub/{name}.jpg", "captions": caps})
  _write_captions(tmp_path / f"caps.{captions_fmt}", rows, captions_fmt)
  out, err = io.StringIO(), io.StringIO()
  summary = mpd.convert(
      str(tmp_path / "images"),
      str(tmp_path / f"caps.{captions_fmt}"),
      str(tmp_path / "out" / "pairs"),
      fmt=fmt,
      out=out,
      err=err,
  )
  assert summary["written"] == 4 and summary["skipped"] == {} and summary["rows"] == 4
  assert "wrote 4 of 4 rows" in out.getvalue() and "4/4 rows (100%)" in err.getvalue()
  assert json.loads((tmp_path / "out" / "pairs.summary.json").read_text())["written"] == 4
  src = _read_back(summary["outputs"], fmt)
  assert len(src) == 4
  for i, row in enumerate(rows):
    rec = src[i]
    assert rec["captions"] == row["captions"] and rec["key"] == row["image"]
    want = np.asarray(Image.open(images / os.path.basename(row["image"])).convert("RGB"))
    np.testing.assert_array_equal(rec["image"], want)  # the bytes on disk, not re-encoded


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "regionclip_jax.tools.make_pretrain_data", *args],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_cli_skip_then_strict(tmp_path):
  (tmp_path / "a.jpg").write_bytes(JPEGS["coffee"])
  (tmp_path / "b.jpg").write_bytes(b"")
  _write_captions(
      tmp_path / "caps.csv",
      [{"image": "a.jpg", "caption": "coffee"}, {"image": "b.jpg", "caption": "x"}],
      "csv",
  )
  base = [f"--images={tmp_path}", f"--captions={tmp_path / 'caps.csv'}"]
  res = _cli(*base, f"--output={tmp_path / 'skip' / 'p'}", "--format=array_record")
  assert res.returncode == 0, res.stderr
  assert f"warning: {tmp_path / 'caps.csv'} line 3 (b.jpg): empty_image" in res.stderr
  assert "2/2 rows (100%)" in res.stderr and "rows/s" in res.stderr
  assert "wrote 1 of 2 rows" in res.stdout and "skipped 1: empty_image 1" in res.stdout
  assert "--config.data.source=array_record" in res.stdout
  res = _cli(*base, f"--output={tmp_path / 'strict' / 'p'}", "--on_error=strict")
  assert res.returncode == 1
  assert res.stderr.startswith(f"error: {tmp_path / 'caps.csv'} line 3 (b.jpg): empty_image")
  assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
  assert not os.listdir(tmp_path / "strict")  # not even a temporary file
  res = _cli(*base, f"--output={tmp_path / 'x'}", "--format=parquet")
  assert res.returncode != 0 and "Traceback" not in res.stderr


def test_strict_stop_keeps_the_previous_output(tmp_path):
  (tmp_path / "a.jpg").write_bytes(JPEGS["rocket"])
  _write_captions(tmp_path / "c.jsonl", [{"image": "a.jpg", "caption": "a rocket"}], "jsonl")
  out = str(tmp_path / "o")
  mpd.convert(str(tmp_path), str(tmp_path / "c.jsonl"), out, out=io.StringIO(), err=io.StringIO())
  before = {p: (tmp_path / p).read_bytes() for p in ("o.image.tsv", "o.text.tsv")}
  with open(tmp_path / "c.jsonl", "a") as f:
    f.write('{"image": "a.jpg", "caption": 3}\n')
  with pytest.raises(mpd.BadRow, match=r"c.jsonl line 2 \(a.jpg\): bad_caption"):
    mpd.convert(str(tmp_path), str(tmp_path / "c.jsonl"), out, on_error="strict", err=io.StringIO())
  assert {p: (tmp_path / p).read_bytes() for p in before} == before
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("fmt", ["tsv", "array_record"])
def test_interrupted_run_leaves_no_output(tmp_path, monkeypatch, fmt):
  for i in range(4):
    (tmp_path / f"{i}.jpg").write_bytes(JPEGS[PHOTOS[i]])
  rows = [{"image": f"{i}.jpg", "caption": f"photo {i}"} for i in range(4)]
  _write_captions(tmp_path / "c.jsonl", rows, "jsonl")
  load = mpd._load

  def interrupted(root, row):
    if row.image == "2.jpg":
      raise KeyboardInterrupt  # Ctrl-C (a SIGKILL leaves only the hidden .tmp files)
    return load(root, row)

  monkeypatch.setattr(mpd, "_load", interrupted)
  with pytest.raises(KeyboardInterrupt):
    mpd.convert(
        str(tmp_path),
        str(tmp_path / "c.jsonl"),
        str(tmp_path / "out" / "p"),
        fmt=fmt,
        err=io.StringIO(),
    )
  assert os.listdir(tmp_path / "out") == []


def test_unusable_inputs_are_one_line(tmp_path):
  (tmp_path / "c.csv").write_text("file,text\na.jpg,x\n")
  with pytest.raises(mpd.InputError, match=r"c.csv: the header row \['file', 'text'\] lacks"):
    mpd.convert(str(tmp_path), str(tmp_path / "c.csv"), str(tmp_path / "o"))
  with pytest.raises(mpd.InputError, match="expected a .jsonl or .csv"):
    mpd.convert(str(tmp_path), __file__, str(tmp_path / "o"))
  (tmp_path / "c.jsonl").write_text('{"image": "gone.jpg", "caption": "x"}\n')
  with pytest.raises(mpd.BadRow, match=r"none of its 1 rows is usable \(missing_image 1\)"):
    mpd.convert(str(tmp_path), str(tmp_path / "c.jsonl"), str(tmp_path / "o"), err=io.StringIO())
  assert not [p for p in os.listdir(tmp_path) if p.startswith("o") or p.startswith(".o")]


def test_array_record_reader_counts_bad_records(tmp_path):
  from array_record.python.array_record_module import ArrayRecordWriter

  path = str(tmp_path / "x.array_record")
  w = ArrayRecordWriter(path, "group_size:1")
  for record in (
      encode_pair("a", JPEGS["coffee"], ["a cup"]),
      b"no header line",
      encode_pair("c", b"not an image", ["x"]),
      encode_pair("d", JPEGS["rocket"], ["  "]),
  ):
    w.write(record)
  w.close()
  ds = ArrayRecordImageText(path, policy="skip")
  assert len(ds) == 4 and ds[0]["captions"] == ["a cup"] and ds[0]["key"] == "a"
  assert [ds[i] for i in (1, 2, 3)] == [None, None, None]
  assert ds.issues.counts == {
      "corrupt_record": 1,
      "corrupt_image": 1,
      "empty_caption": 1,
      "record_without_captions": 1,
  }
  with pytest.raises(DataError, match=r"x.array_record record 1: corrupt_record"):
    ArrayRecordImageText(path)[1]


# -- property test: corrupted inputs --------------------------------------------------------------

# kind -> (what the row is, JSONL reason, CSV reason); None = written. A CSV has no types: a number
# or "Infinity" there is a caption like any other.
KINDS = {
    "good": (None, None),
    "empty_image": ("empty_image", "empty_image"),
    "truncated_jpeg": ("corrupt_image", "corrupt_image"),
    "text_as_jpg": ("corrupt_image", "corrupt_image"),
    "huge_png": ("corrupt_image", "corrupt_image"),
    "missing_image": ("missing_image", "missing_image"),
    "caption_nan": ("bad_caption", "missing_caption"),
    "caption_number": ("bad_caption", None),
    "caption_infinity": ("bad_caption", None),
    "caption_missing": ("missing_caption", "missing_caption"),
    "caption_blank": ("missing_caption", "missing_caption"),
    "huge_integer": ("unreadable_row", None),
    "not_a_row": ("unreadable_row", "unreadable_row"),
    "tab_in_name": ("bad_key", "bad_key"),
    "duplicate": ("duplicate_key", "duplicate_key"),
}


def _files_for(kind: str, i: int, cut: float, first_good: str | None):
  """-> (image name, image bytes or None, JSONL line, CSV line) of one row of `kind`."""
  photo = JPEGS[PHOTOS[i % len(PHOTOS)]]
  name, data = f"r{i}.jpg", photo
  caption: object = f"caption {i}"
  if kind == "empty_image":
    data = b""
  elif kind == "truncated_jpeg":
    data = photo[: max(1, int(len(photo) * cut))]
  elif kind == "text_as_jpg":
    data = b"just some text\n"
  elif kind == "huge_png":
    data = _bomb_png()
  elif kind == "missing_image":
    data = None
  elif kind == "tab_in_name":
    name = f"r\t{i}.jpg"
  elif kind == "duplicate":
    name, data = first_good, None
  obj = {"image": name, "caption": caption}
  cells = [name, caption]
  if kind == "caption_nan":
    obj["caption"], cells[1] = float("nan"), "NaN"
  elif kind == "caption_number":
    obj["caption"], cells[1] = 3.25, "3.25"
  elif kind == "caption_infinity":
    obj["caption"], cells[1] = float("inf"), "Infinity"
  elif kind == "caption_missing":
    del obj["caption"]
    cells = [name]
  elif kind == "caption_blank":
    obj["caption"], cells[1] = "   ", "   "
  line = json.dumps(obj)
  if kind == "huge_integer":  # more digits than Python reads from json (4,300)
    line = line[:-1] + ', "id": ' + "9" * 5000 + "}"
  buf = io.StringIO()
  csv.writer(buf, lineterminator="\n").writerow(cells)
  row = buf.getvalue()
  if kind == "not_a_row":
    line, row = "[1, 2", "\xff.jpg,x\n"  # CSV: a byte that is not UTF-8 (written below)
  return name, data, line + "\n", row


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.tuples(st.sampled_from(sorted(KINDS)), st.floats(0.05, 0.95)), max_size=8),
    captions_fmt=st.sampled_from(["jsonl", "csv"]),
    fmt=st.sampled_from(["tsv", "array_record"]),
    strict=st.booleans(),
)
@example(
    rows=[(k, 0.5) for k in ["good", *sorted(KINDS)]], captions_fmt="jsonl", fmt="tsv", strict=False
)
@example(
    rows=[(k, 0.9) for k in ["good", *sorted(KINDS)]], captions_fmt="csv", fmt="tsv", strict=False
)
@example(rows=[("huge_png", 0.5)], captions_fmt="csv", fmt="array_record", strict=False)
def test_corrupted_inputs(tmp_path_factory, rows, captions_fmt, fmt, strict):
  """No traceback; every bad row named with its reason; the counts; the good rows' output (or a
  one-line stop at the first bad row and no file at all)."""
  d = tmp_path_factory.mktemp("bad")
  lines, want, first_good = [], [], None
  for i, (kind, cut) in enumerate(rows):
    if kind == "duplicate" and first_good is None:
      kind = "good"  # nothing to duplicate yet
    name, data, jline, crow = _files_for(kind, i, cut, first_good)
    if data is not None:
      (d / name).write_bytes(data)
    reason = KINDS[kind][0 if captions_fmt == "jsonl" else 1]
    if reason is None and first_good is None:
      first_good = name
    lines.append(jline if captions_fmt == "jsonl" else crow)
    want.append((reason, name))
  captions = d / f"caps.{captions_fmt}"
  if captions_fmt == "jsonl":
    captions.write_text("".join(lines))
  else:
    with open(captions, "wb") as f:
      f.write(b"image,caption\n" + "".join(lines).encode("utf-8").replace(b"\xc3\xbf", b"\xff"))
  first_line = 1 if captions_fmt == "jsonl" else 2
  err = io.StringIO()
  bad = [(first_line + i, r) for i, (r, _) in enumerate(want) if r is not None]
  good = [name for r, name in want if r is None]
  args = (str(d), str(captions), str(d / "out" / "p"))
  if (strict and bad) or not good:
    with pytest.raises(mpd.BadRow) as e:
      mpd.convert(*args, fmt=fmt, on_error="strict" if strict else "skip", err=err)
    msg = str(e.value)
    assert "\n" not in msg
    if strict and bad:
      assert f"{captions} line {bad[0][0]}" in msg and f": {bad[0][1]}: " in msg
    assert not os.path.exists(d / "out") or not os.listdir(d / "out")
    return
  summary = mpd.convert(*args, fmt=fmt, on_error="strict" if strict else "skip", err=err)
  log = err.getvalue()
  assert "Traceback" not in log
  for line, reason in bad:
    assert f"warning: {captions} line {line}" in log and f": {reason}: " in log, (line, reason, log)
  assert summary["written"] == len(good) and summary["rows"] == len(rows)
  expected: dict = {}
  for _, reason in bad:
    expected[reason] = expected.get(reason, 0) + 1
  assert summary["skipped"] == expected
  src = _read_back(summary["outputs"], fmt)
  assert [src[i]["key"] for i in range(len(src))] == good
  assert all(src[i] is not None and src[i]["captions"] for i in range(len(src)))
