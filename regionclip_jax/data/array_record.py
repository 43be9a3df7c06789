"""Image-text pairs in one or more array_record files (written by `tools.make_pretrain_data`, read
through grain's ArrayRecordDataSource, so grain workers reopen them by path).

One record per pair: `json {"key": str, "captions": [str, ...]}` + `\n` + the encoded image bytes
as they were on disk (json has no raw newline, so the first one ends the header).
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import grain

from regionclip_jax import files
from regionclip_jax.data.image_text import MAX_CAPTIONS, as_list
from regionclip_jax.data.images import decode_image_and_size, with_original_size
from regionclip_jax.data.validation import IssueCounter, check_policy, handle, sanitize_captions


class ArrayRecordImageText:
  """array_record file(s) of `encode_pair` records -> records (image, captions, image_id = index,
  key). `draft_for`: reduced-size JPEG decoding, as in `TsvImageText`."""

  def __init__(
      self,
      paths,
      *,
      policy: str = "strict",
      counter: IssueCounter | None = None,
      max_captions: int = MAX_CAPTIONS,
      draft_for: tuple[int, int] | None = None,
  ):
    self.policy = check_policy(policy)
    self.draft_for = draft_for
    self.max_captions = max_captions
    self.paths = [os.fspath(p) for p in as_list(paths)]
    for p in self.paths:
      if not os.path.isfile(p):
        raise FileNotFoundError(f"array_record file not found: {p}")
    try:
      # picklable (reopened in each grain worker process)
      self.source = grain.sources.ArrayRecordDataSource(self.paths)
    except RuntimeError as e:
      raise ValueError(f"{self.paths}: not a readable array_record file ({e})") from None
    self.issues = counter or IssueCounter(os.path.basename(self.paths[0]))

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict | None:
    where = f"{','.join(self.paths)} record {index}"
    try:
      key, raw, data = decode_pair(self.source[int(index)])
    except ValueError as e:
      handle(self.policy, self.issues, "corrupt_record", where, str(e))
      return None
    where += f" (key {key})"
    if not isinstance(raw, (str, list)):
      handle(self.policy, self.issues, "record_without_captions", where, repr(raw)[:40])
      return None
    captions = sanitize_captions(raw, policy=self.policy, counter=self.issues, where=where)
    if not captions:
      handle(self.policy, self.issues, "record_without_captions", where)
      return None
    decoded = decode_image_and_size(
        data, policy=self.policy, counter=self.issues, where=where, draft_for=self.draft_for
    )
    if decoded is None:
      return None
    record = {
        "image": decoded[0],
        "captions": captions[: self.max_captions],
        "image_id": int(index),
        "key": key,
    }
    return with_original_size(record, decoded[1])

  def report(self) -> str:
    return self.issues.report()


def encode_pair(key: str, data: bytes, captions: Sequence[str]) -> bytes:
  """One array_record record (module docstring)."""
  head = json.dumps({"key": key, "captions": list(captions)}).encode()
  return head + b"\n" + bytes(data)


def decode_pair(record: bytes) -> tuple[str, list[str], bytes]:
  """-> (key, captions, encoded image); ValueError when the record is not one `encode_pair` made."""
  head, sep, data = bytes(record).partition(b"\n")
  try:
    meta = json.loads(head) if sep else None
  except ValueError as e:  # not UTF-8, not json
    raise ValueError(f"header is not json ({e})") from None
  if not isinstance(meta, dict) or "captions" not in meta:
    raise ValueError("header lacks required field 'captions'")
  return str(meta.get("key", "")), meta["captions"], data


def write_array_record(path: str, items: Iterable[tuple[str, bytes, list[str]]]) -> int:
  """(key, encoded image bytes, captions) items -> one array_record file -> pairs written.

  Written under a temporary name and renamed when complete (`files.atomic_path`): an exception
  from `items` leaves the previous file, if any, untouched.
  """
  from array_record.python.array_record_module import ArrayRecordWriter  # installed with grain

  n = 0
  with files.atomic_path(path) as tmp:
    # group_size 1: each record is read alone (random access), as grain does
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
      for key, data, captions in items:
        writer.write(encode_pair(key, data, captions))
        n += 1
    finally:
      writer.close()
  return n
