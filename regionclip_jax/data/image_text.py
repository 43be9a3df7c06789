"""Image-text pair sources: RegionCLIP's TSV pair format and a plain JSONL.

TSV (as the official `CLIPImgTxtPairTSVDataset` reads it): an image TSV whose rows are
`key<TAB>base64-encoded image` and a text TSV whose rows are `key<TAB>json`, the json holding
"captions" (a list; the official code keeps the first 5) or "tags" (a string). Row i of both
files is the same pair and the keys must agree. Several shards may be given as lists. Rows are
located by byte offset: a `<file>.lineidx` beside the TSV (one offset per line, as the official
tools write) is used when present, otherwise the file is scanned once at start-up.

JSONL: one object per line, `{"image": path, "captions": [...]}` (a single "caption" string is
accepted too); relative paths are taken from `image_root` (default: the JSONL's folder).

The array_record pair format is in `regionclip_jax.data.array_record`.
"""

from __future__ import annotations

import array
import base64
import binascii
import json
import os
import threading
from typing import Iterable, Sequence

import numpy as np

from regionclip_jax import files
from regionclip_jax.data.images import decode_image_and_size, with_original_size
from regionclip_jax.data.validation import IssueCounter, check_policy, handle, sanitize_captions

MAX_CAPTIONS = 5  # official: captions[:5]


def lineidx_path(tsv: str) -> str:
  """The `.lineidx` beside a TSV (official naming: the TSV's name without its extension)."""
  return os.path.splitext(tsv)[0] + ".lineidx"


def _line_offsets(path: str) -> np.ndarray:
  """Byte offset of every non-empty line of `path` (from `path.lineidx` when it is there)."""
  idx = lineidx_path(path)
  if os.path.isfile(idx):
    with open(idx) as f:
      try:
        return np.array([int(x) for x in f if x.strip()], np.int64)
      except ValueError as e:
        raise ValueError(f"{idx}: not a list of byte offsets ({e})") from None
  offsets, pos = [], 0
  with open(path, "rb") as f:
    for line in f:
      if line.strip():
        offsets.append(pos)
      pos += len(line)
  return np.array(offsets, np.int64)


class _TsvFile:
  """Random access to rows of one or several TSV shards; thread-safe (one handle per thread)."""

  def __init__(self, paths: Sequence[str]):
    self.paths = [os.fspath(p) for p in paths]
    for p in self.paths:
      if not os.path.isfile(p):
        raise FileNotFoundError(f"TSV file not found: {p}")
    self.offsets = [_line_offsets(p) for p in self.paths]
    self.starts = np.cumsum([0] + [len(o) for o in self.offsets])
    self._local = threading.local()

  def __getstate__(self) -> dict:
    # Pickled into grain worker processes: open file handles (per thread) stay behind, each
    # process opens its own.
    state = dict(self.__dict__)
    del state["_local"]
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._local = threading.local()

  def __len__(self) -> int:
    return int(self.starts[-1])

  def row(self, index: int) -> tuple[str, int, list[str]]:
    """(path, line number 1-based among non-empty lines, tab-split fields)."""
    shard = int(np.searchsorted(self.starts, index, side="right") - 1)
    local = index - int(self.starts[shard])
    handles = getattr(self._local, "handles", None)
    if handles is None:
      handles = self._local.handles = {}
    f = handles.get(shard)
    if f is None:
      f = handles[shard] = open(self.paths[shard], "rb")
    f.seek(int(self.offsets[shard][local]))
    line = f.readline().decode("utf-8").rstrip("\r\n")
    return self.paths[shard], local + 1, line.split("\t")


def as_list(p) -> list:
  return [p] if isinstance(p, (str, os.PathLike)) else list(p)


class TsvImageText:
  """RegionCLIP image/text TSV pairs -> records (image, captions, image_id = row index, key).

  `draft_for` = (short_edge, max_size) of the largest resize that follows (pretraining:
  (800, 1333)) lets large JPEGs decode at a reduced size (`data.images`; record `orig_size`).
  """

  def __init__(
      self,
      image_tsv,
      text_tsv,
      *,
      policy: str = "strict",
      counter: IssueCounter | None = None,
      max_captions: int = MAX_CAPTIONS,
      draft_for: tuple[int, int] | None = None,
  ):
    self.policy = check_policy(policy)
    self.draft_for = draft_for
    self.images, self.texts = _TsvFile(as_list(image_tsv)), _TsvFile(as_list(text_tsv))
    if len(self.images) != len(self.texts):
      raise ValueError(
          f"image TSV {self.images.paths} has {len(self.images)} rows but text TSV "
          f"{self.texts.paths} has {len(self.texts)}"
      )
    self.max_captions = max_captions
    self.issues = counter or IssueCounter("tsv")

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict | None:
    ipath, line, irow = self.images.row(index)
    tpath, _, trow = self.texts.row(index)
    if len(irow) < 2 or len(trow) < 2:
      bad = ipath if len(irow) < 2 else tpath
      raise ValueError(
          f"{bad}: row {line} needs 'key<TAB>value', got {len(irow if bad == ipath else trow)} field(s)"
      )
    if irow[0] != trow[0]:
      raise ValueError(
          f"{tpath}: row {line} key {trow[0]!r} does not match image key {irow[0]!r} in {ipath}"
      )
    try:
      text = json.loads(trow[-1])
    except json.JSONDecodeError as e:
      raise ValueError(
          f"{tpath}: row {line} (key {trow[0]}) text is not readable json ({e})"
      ) from None
    if not isinstance(text, dict) or not ("captions" in text or "tags" in text):
      raise ValueError(f"{tpath}: row {line} (key {trow[0]}) lacks required field 'captions'")
    raw = text.get("captions", text.get("tags"))
    where = f"{tpath} row {line} (key {trow[0]})"
    captions = sanitize_captions(raw, policy=self.policy, counter=self.issues, where=where)[
        : self.max_captions
    ]
    if not captions:
      handle(self.policy, self.issues, "record_without_captions", where)
      return None
    try:
      data = base64.b64decode(irow[-1], validate=True)
    except (binascii.Error, ValueError) as e:
      handle(
          self.policy,
          self.issues,
          "corrupt_image",
          f"{ipath} row {line} (key {irow[0]})",
          f"base64: {e}",
      )
      return None
    decoded = decode_image_and_size(
        data,
        policy=self.policy,
        counter=self.issues,
        where=f"{ipath} row {line} (key {irow[0]})",
        draft_for=self.draft_for,
    )
    if decoded is None:
      return None
    record = {"image": decoded[0], "captions": captions, "image_id": int(index), "key": irow[0]}
    return with_original_size(record, decoded[1])

  def report(self) -> str:
    return self.issues.report()


class JsonlImageText:
  """`{"image": path, "captions": [...]}` per line -> records (image, captions, image_id = line index).

  `draft_for`: reduced-size JPEG decoding, as in `TsvImageText`.
  """

  def __init__(
      self,
      path: str | os.PathLike,
      image_root: str | os.PathLike | None = None,
      *,
      policy: str = "strict",
      counter: IssueCounter | None = None,
      draft_for: tuple[int, int] | None = None,
  ):
    self.policy = check_policy(policy)
    self.draft_for = draft_for
    self.path = os.fspath(path)
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f"JSONL file not found: {self.path}")
    self.image_root = (
        os.fspath(image_root) if image_root is not None else os.path.dirname(self.path)
    )
    self.issues = counter or IssueCounter(os.path.basename(self.path))
    self._records: list[tuple[int, str, list[str]]] = []
    with open(self.path) as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{self.path}: line {lineno} is not readable json ({e})") from None
        if (
            not isinstance(obj, dict)
            or "image" not in obj
            or not ("captions" in obj or "caption" in obj)
        ):
          raise ValueError(
              f"{self.path}: line {lineno} lacks required field "
              f"{'image' if not isinstance(obj, dict) or 'image' not in obj else 'captions'}"
          )
        captions = sanitize_captions(
            obj.get("captions", obj.get("caption")),
            policy=self.policy,
            counter=self.issues,
            where=f"{self.path} line {lineno}",
        )
        if not captions:
          handle(self.policy, self.issues, "record_without_captions", f"{self.path} line {lineno}")
          continue
        self._records.append((lineno, obj["image"], captions))

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict | None:
    lineno, image, captions = self._records[index]
    path = image if os.path.isabs(image) else os.path.join(self.image_root, image)
    decoded = decode_image_and_size(
        path,
        policy=self.policy,
        counter=self.issues,
        where=f"{self.path} line {lineno}",
        draft_for=self.draft_for,
    )
    if decoded is None:
      return None
    record = {"image": decoded[0], "captions": list(captions), "image_id": int(index)}
    return with_original_size(record, decoded[1])

  def report(self) -> str:
    return self.issues.report()


def write_tsv_pairs(
    image_tsv: str,
    text_tsv: str,
    items: Iterable[tuple[str, bytes, list[str]]],
    *,
    lineidx: bool = True,
) -> int:
  """Writes (key, encoded image bytes, captions) items in the RegionCLIP TSV pair format, and a
  `.lineidx` beside each TSV (saves the start-up scan) -> the number of pairs written.

  `items` may be a generator: pairs are written as they come. Each TSV is written under a
  temporary name and renamed only once all items are in (`files.atomic_open`): an exception
  from `items` leaves the previous TSVs, if any, untouched (their `.lineidx`, which would not
  fit the new ones, is removed first; the reader then scans them).
  """
  # a kill between the renames below then leaves TSVs without an index (scanned), never with
  # a stale one
  for tsv in (image_tsv, text_tsv):
    if os.path.exists(lineidx_path(tsv)):
      os.remove(lineidx_path(tsv))
  offsets = (array.array("q"), array.array("q"))  # 8 bytes a row, not a Python int
  with files.atomic_open(image_tsv, "wb") as fi, files.atomic_open(text_tsv, "wb") as ft:
    pos = [0, 0]
    for key, data, captions in items:
      lines = (
          f"{key}\t{base64.b64encode(data).decode('ascii')}\n".encode(),
          f"{key}\t{json.dumps({'captions': list(captions)})}\n".encode(),
      )
      for j, (f, line) in enumerate(zip((fi, ft), lines)):
        offsets[j].append(pos[j])
        f.write(line)
        pos[j] += len(line)
  if lineidx:
    for tsv, offs in zip((image_tsv, text_tsv), offsets):
      files.write_text(lineidx_path(tsv), "".join(f"{o}\n" for o in offs))
  return len(offsets[0])
