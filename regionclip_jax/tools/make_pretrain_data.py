r"""A folder of images + a captions file -> the image-text files RegionCLIP pretraining reads.

  python -m regionclip_jax.tools.make_pretrain_data --images=DIR --captions=FILE.jsonl|FILE.csv \
      --output=PREFIX [--format=tsv|array_record] [--on_error=skip|strict] [--num_threads=8]

Captions: JSONL, one object per line, `{"image": path, "captions": [str, ...]}` (or `"caption":
str`; an optional `"key"`, else the image path is the key), or CSV with a header row naming an
`image` and a `caption` column (and optionally `key`), one row per image. Image paths are relative
to --images (or absolute). Output: `tsv` -> PREFIX.image.tsv + PREFIX.text.tsv with a .lineidx
each (RegionCLIP's TSV pair format: data.source "tsv", the rn50_cc3m preset), `array_record` ->
PREFIX.array_record (data.source "array_record"); then PREFIX.summary.json (counts). Images are
stored as the bytes on disk, once they decode fully.

Bad rows, by reason: unreadable_row (not json / not an object / not UTF-8 / unparsable CSV),
missing_image_field, missing_caption (absent, empty, or a CSV "nan" / "none" / "null"),
bad_caption (not a string: a number, NaN, a nested list), bad_key (not a string or integer, or
holding a tab or line break), duplicate_key (an earlier row claimed the key; it is kept),
missing_image, empty_image (0 bytes), corrupt_image (does not decode: truncated, not an image,
too many pixels). `--on_error=skip` (default) leaves each out with a warning line naming the
file, line and image, and counts it in the final summary; `strict` stops at the first with one
line naming it (exit status 1). Every output appears only complete (temporary name + rename):
a strict stop or a kill leaves no partial file, and the summary json, written last, marks a
finished run. A missing input, a CSV without those columns, or no good row stops in both modes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import functools
import io
import json
import os
import re
import sys
import time
from typing import Iterable, Iterator, Sequence

from absl import app, flags
from PIL import Image

from regionclip_jax import files
from regionclip_jax.data.array_record import write_array_record
from regionclip_jax.data.image_text import write_tsv_pairs

FORMATS = ("tsv", "array_record")
NAME = "[make_pretrain_data]"
CSV_PLACEHOLDERS = ("nan", "none", "null")  # what pandas & co. write for a missing caption
MAX_EXAMPLES = 1000  # skipped rows listed in the summary json


class InputError(ValueError):
  """An input the whole run cannot use (both modes)."""


class BadRow(ValueError):
  """A bad row in strict mode; the message is one line naming it."""


@dataclasses.dataclass
class Row:
  where: str  # "<captions file> line N"
  image: str = ""
  key: str = ""
  captions: list = dataclasses.field(default_factory=list)
  problem: tuple[str, str] | None = None  # (reason, detail)

  def name(self) -> str:
    return f"{self.where} ({self.image})" if self.image else self.where


def _row(where: str, image, captions, key, csv_cells: bool = False) -> Row:
  """Field values of one row -> a Row, with the first problem found."""
  if not isinstance(image, str) or not image.strip():
    return Row(where, problem=("missing_image_field", f"image = {image!r}"[:80]))
  row = Row(where, image.strip())
  if captions is None:
    row.problem = ("missing_caption", "no caption field")
    return row
  if isinstance(captions, str):
    captions = [captions]
  if not isinstance(captions, list):
    row.problem = ("bad_caption", f"caption is {type(captions).__name__} {captions!r}"[:80])
    return row
  if not captions:
    row.problem = ("missing_caption", "an empty list of captions")
    return row
  for j, c in enumerate(captions):
    if not isinstance(c, str):
      row.problem = ("bad_caption", f"caption {j} is {type(c).__name__} {c!r}"[:80])
      return row
    if not c.strip() or (csv_cells and c.strip().lower() in CSV_PLACEHOLDERS):
      row.problem = ("missing_caption", f"caption {j} is {c!r}"[:80])
      return row
    if not _is_unicode(c):  # a json escape of half a surrogate pair
      row.problem = ("bad_caption", f"caption {j} is not valid Unicode: {c!r}"[:80])
      return row
  row.captions = [c.strip() for c in captions]
  key = row.image if key is None or key == "" else key
  if isinstance(key, bool) or not isinstance(key, (str, int)):
    row.problem = ("bad_key", f"key = {key!r}"[:80])
  elif re.search(r"[\t\r\n]", str(key)) or not _is_unicode(str(key)):
    # TSV rows are `key<TAB>value` lines of UTF-8
    row.problem = (
        "bad_key",
        f"key {str(key)!r} holds a tab, a line break or half a surrogate"[:80],
    )
  row.key = str(key)
  return row


def _is_unicode(text: str) -> bool:
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def jsonl_rows(path: str) -> Iterator[Row]:
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      where = f"{path} line {n}"
      try:
        obj = json.loads(raw.decode("utf-8"))
      except ValueError as e:  # not UTF-8, not json, or an integer too long to read
        yield Row(where, problem=("unreadable_row", f"{type(e).__name__}: {e}"[:100]))
        continue
      if not isinstance(obj, dict):
        yield Row(where, problem=("unreadable_row", f"not a json object: {raw[:40]!r}"))
        continue
      captions = obj["captions"] if "captions" in obj else obj.get("caption")
      yield _row(where, obj.get("image"), captions, obj.get("key"))


def csv_rows(path: str) -> Iterator[Row]:
  # surrogateescape: a byte that is not UTF-8 marks its row, instead of stopping the file
  with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
    reader = csv.reader(f)
    try:
      header = [h.strip().lstrip("\ufeff").lower() for h in next(reader)]
    except (StopIteration, csv.Error) as e:
      raise InputError(f"{path}: no readable CSV header row ({e or 'empty file'})") from None
    missing = [c for c in ("image", "caption") if c not in header]
    if missing:
      raise InputError(f"{path}: the header row {header} lacks the column(s) {missing}")
    col = {c: header.index(c) for c in ("image", "caption", "key") if c in header}
    while True:
      try:
        cells = next(reader)
      except StopIteration:
        return
      except csv.Error as e:
        yield Row(f"{path} line {reader.line_num}", problem=("unreadable_row", str(e)[:100]))
        continue
      if not any(c.strip() for c in cells):
        continue
      where = f"{path} line {reader.line_num}"
      if any(re.search("[\udc80-\udcff]", c) for c in cells):
        yield Row(where, problem=("unreadable_row", "not UTF-8 text"))
        continue
      get = {c: (cells[i] if i < len(cells) else None) for c, i in col.items()}
      yield _row(where, get["image"], get["caption"], get.get("key"), csv_cells=True)


def _claim_keys(rows: Iterable[Row]) -> Iterator[Row]:
  """Marks a row whose key an earlier good row has."""
  seen: dict[str, str] = {}
  for r in rows:
    if r.problem is None:
      if r.key in seen:
        r.problem = ("duplicate_key", f"{seen[r.key]} has key {r.key!r}; that one is kept")
      else:
        seen[r.key] = r.where
    yield r


def _decode_problem(data: bytes, name: str) -> str | None:
  """Why PIL cannot decode `data` to an RGB image as the readers will; None when it can."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()  # the whole file: a truncated one fails here
      if 0 in im.convert("RGB").size:
        return "decoded size 0"
  except Exception as e:  # PIL raises many types for bad data; all mean "corrupt image"
    return re.sub(r"<_io\.BytesIO object at \w+>", name, f"{type(e).__name__}: {e}")[:120]
  return None


def _load(root: str, row: Row) -> tuple[Row, bytes | None]:
  """Reads and checks the row's image (in a worker thread); sets row.problem on failure."""
  if row.problem is not None:
    return row, None
  path = row.image if os.path.isabs(row.image) else os.path.join(root, row.image)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    row.problem = ("missing_image", f"{path}: {e.strerror or e}")
    return row, None
  if not data:
    row.problem = ("empty_image", f"{path} has 0 bytes")
    return row, None
  problem = _decode_problem(data, os.path.basename(path))
  if problem:
    row.problem = ("corrupt_image", problem)
    return row, None
  return row, data


def _ordered_map(fn, items: Iterable, num_threads: int) -> Iterator:
  """map(fn, items) in order, `num_threads` at a time, a bounded number of results ahead."""
  if num_threads <= 1:
    yield from map(fn, items)
    return
  ex = concurrent.futures.ThreadPoolExecutor(num_threads)
  try:
    ahead: collections.deque = collections.deque()
    for item in items:
      ahead.append(ex.submit(fn, item))
      if len(ahead) >= 4 * num_threads:
        yield ahead.popleft().result()
    while ahead:
      yield ahead.popleft().result()
  finally:
    ex.shutdown(wait=True, cancel_futures=True)


def output_paths(output: str, fmt: str) -> list[str]:
  if fmt == "tsv":
    return [f"{output}.image.tsv", f"{output}.text.tsv"]
  return [f"{output}.array_record"]


def config_overrides(paths: Sequence[str], fmt: str) -> str:
  """The pretraining config flags that read `paths`."""
  if fmt == "tsv":
    keys = {"data.image_tsv": paths[0], "data.text_tsv": paths[1]}
  else:
    keys = {"data.array_record_path": paths[0]}
  return " ".join([f"--config.data.source={fmt}"] + [f"--config.{k}={v}" for k, v in keys.items()])


class _Progress:
  """`done/total rows | rows/s | written | skipped` on `stream`, at most every `every` s."""

  def __init__(self, total: int, stream, every: float):
    self.total, self.stream, self.every = total, stream, every
    self.start = self.last = time.monotonic()

  def update(self, done: int, written: int, skipped: int, final: bool = False) -> None:
    now = time.monotonic()
    if not final and now - self.last < self.every:
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    pct = 100.0 * done / max(self.total, 1)
    print(
        f"{NAME} {done}/{self.total} rows ({pct:.0f}%) | {rate:.0f} rows/s | written {written} "
        f"| skipped {skipped}",
        file=self.stream,
        flush=True,
    )


def convert(
    images: str,
    captions: str,
    output: str,
    *,
    fmt: str = "tsv",
    on_error: str = "skip",
    num_threads: int = 8,
    progress_every: float = 2.0,
    out=None,
    err=None,
) -> dict:
  """The command (module docstring) -> its summary (also PREFIX.summary.json).

  Raises InputError (unusable input), BadRow (strict mode) or BadRow when no row is good; then
  no output file was written or changed.
  """
  out, err = out or sys.stdout, err or sys.stderr
  if fmt not in FORMATS or on_error not in ("skip", "strict"):
    raise InputError(f"format {fmt!r} / on_error {on_error!r}: expected {FORMATS} / skip|strict")
  if not os.path.isdir(images):
    raise InputError(f"--images={images}: not a folder")
  if not os.path.isfile(captions):
    raise InputError(f"--captions={captions}: no such file")
  ext = os.path.splitext(captions)[1].lower()
  if ext not in (".jsonl", ".csv"):
    raise InputError(f"--captions={captions}: expected a .jsonl or .csv file")
  read_rows = jsonl_rows if ext == ".jsonl" else csv_rows
  total = sum(1 for _ in read_rows(captions))  # a parse-only pass, for the progress line
  summary_path = f"{output}.summary.json"
  if os.path.exists(summary_path):  # it would describe outputs about to be replaced
    os.remove(summary_path)
  paths = output_paths(output, fmt)
  t0 = time.monotonic()
  progress = _Progress(total, err, progress_every)
  counts: collections.Counter = collections.Counter()
  skipped: list[dict] = []
  tally = {"done": 0, "written": 0}

  def good_pairs():
    rows = _claim_keys(read_rows(captions))
    for row, data in _ordered_map(functools.partial(_load, images), rows, num_threads):
      tally["done"] += 1
      if row.problem is None:
        tally["written"] += 1
        yield row.key, data, row.captions
      else:
        reason, detail = row.problem
        msg = f"{row.name()}: {reason}: {detail}"
        if on_error == "strict":
          raise BadRow(f"{msg} (--on_error=skip leaves such rows out and counts them)")
        counts[reason] += 1
        if len(skipped) < MAX_EXAMPLES:
          skipped.append(
              {"where": row.where, "image": row.image, "reason": reason, "detail": detail}
          )
        print(f"warning: {msg} (skipped)", file=err, flush=True)
      progress.update(tally["done"], tally["written"], sum(counts.values()))
    if not tally["written"]:
      # raised inside the writer: its temporary files go, nothing appears
      raise BadRow(f"{captions}: none of its {tally['done']} rows is usable ({_by_reason(counts)})")

  if fmt == "tsv":
    write_tsv_pairs(paths[0], paths[1], good_pairs())
  else:
    write_array_record(paths[0], good_pairs())
  progress.update(tally["done"], tally["written"], sum(counts.values()), final=True)
  summary = {
      "images": images,
      "captions": captions,
      "format": fmt,
      "outputs": paths,
      "rows": tally["done"],
      "written": tally["written"],
      "skipped": dict(sorted(counts.items())),
      "skipped_rows": skipped,
      "seconds": round(time.monotonic() - t0, 3),
  }
  files.write_json(summary_path, summary)
  n_skip = sum(counts.values())
  print(
      f"{NAME} wrote {tally['written']} of {tally['done']} rows to {', '.join(paths)} in "
      f"{summary['seconds']:.1f} s; skipped {n_skip}"
      + (f": {_by_reason(counts)}" if n_skip else ""),
      file=out,
      flush=True,
  )
  print(f"{NAME} pretrain on it with {config_overrides(paths, fmt)}", file=out, flush=True)
  return summary


def _by_reason(counts) -> str:
  return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no rows"


def _define_flags() -> None:
  """The command line, defined only when run as a program (importing must not claim flag names
  such as --output that other tools define too)."""
  flags.DEFINE_string("images", None, "folder the captions file's image paths are relative to")
  flags.DEFINE_string("captions", None, "captions file: .jsonl or .csv (module docstring)")
  flags.DEFINE_string("output", None, "output prefix: PREFIX.image.tsv / PREFIX.array_record")
  flags.DEFINE_enum("format", "tsv", FORMATS, "output format")
  flags.DEFINE_enum("on_error", "skip", ("skip", "strict"), "a bad row: skip and count, or stop")
  flags.DEFINE_integer("num_threads", 8, "threads reading and checking images")
  flags.DEFINE_float("progress_every", 2.0, "seconds between progress lines")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  F = flags.FLAGS
  for name in ("images", "captions", "output"):
    if not F[name].value:
      print(f"error: --{name} is required", file=sys.stderr)
      sys.exit(2)
  try:
    convert(
        F.images,
        F.captions,
        F.output,
        fmt=F.format,
        on_error=F.on_error,
        num_threads=F.num_threads,
        progress_every=F.progress_every,
    )
  except InputError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except BadRow as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
