"""Bad-input policy: structural problems stop, data-level problems follow `strict | skip`.

Structural (always an error, one line naming the file and record): unreadable json, a missing
required field or one of the wrong json type (`as_int`, `as_xywh`), an unknown split. Data-level
(per `policy`): a corrupt or missing image, a box of zero or negative size, a box outside the
image, an empty caption, an annotation of a category the json does not list, a second image with
an id already taken. In `strict` mode they raise `DataError` naming the file and record; in
`skip` mode the record (or box, or caption) is dropped or repaired, the event is counted in an
`IssueCounter` and `IssueCounter.report()` lists the counts at the end. A repair never changes
meaning silently: it is always counted by kind.

Detections to score (`evaluation.detections_io`) are the exception: there every problem of one
record, a missing or mistyped field included, follows the policy. Command-line tools give the
counter a `warn` callable: the first `warn_first` events are printed as they happen, then one
line saying the rest are only counted.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import weakref
from typing import Any, Callable

import numpy as np

POLICIES = ("strict", "skip")


class DataError(ValueError):
  """A data-level problem met in `strict` mode."""


def check_policy(policy: str) -> str:
  if policy not in POLICIES:
    raise ValueError(f"unknown bad-record policy {policy!r}; expected one of {POLICIES}")
  return policy


class IssueCounter:
  """Thread-safe counts of skipped / repaired things by kind, with a few examples each."""

  def __init__(
      self, name: str = "data", *, warn: Callable[[str], Any] | None = None, warn_first: int = 10
  ):
    self.name = name
    self._lock = threading.Lock()
    self._counts: collections.Counter = collections.Counter()
    self._examples: dict[str, list[str]] = collections.defaultdict(list)
    self._warn, self._warn_first, self._events = warn, warn_first, 0
    _LIVE_COUNTERS.add(self)

  def add(self, kind: str, where: str, n: int = 1, detail: str = "") -> None:
    with self._lock:
      self._counts[kind] += n
      if len(self._examples[kind]) < 3:
        self._examples[kind].append(where)
      self._events += 1
      event = self._events
    if self._warn is None or event > self._warn_first + 1:
      return
    if event <= self._warn_first:
      self._warn(f"{where}: {kind}{': ' + detail if detail else ''}")
    else:
      self._warn(f"{self.name}: further issues are counted, not listed; see the summary")

  @property
  def counts(self) -> dict[str, int]:
    with self._lock:
      return dict(self._counts)

  @property
  def examples(self) -> dict[str, list[str]]:
    """kind -> the first (up to three) places it happened, a copy."""
    with self._lock:
      return {k: list(v) for k, v in self._examples.items()}

  def total(self) -> int:
    with self._lock:
      return sum(self._counts.values())

  def report(self) -> str:
    """One line per kind: count and up to three examples; '' when nothing happened."""
    with self._lock:
      lines = [
          f"{self.name}: {kind}: {n} (e.g. {'; '.join(self._examples[kind])})"
          for kind, n in sorted(self._counts.items())
      ]
    return "\n".join(lines)

  def log(self, logger: logging.Logger | None = None) -> None:
    text = self.report()
    if text:
      (logger or logging.getLogger(__name__)).warning("data issues skipped or repaired:\n%s", text)


_LIVE_COUNTERS: "weakref.WeakSet[IssueCounter]" = weakref.WeakSet()


def report_all() -> str:
  """The reports of every live IssueCounter (all sources of this process); '' when all clean.

  Training loops print it at the end of a run, so skipped or repaired records are never silent.
  A file read by several sources of one job (e.g. checked before training, then read by each
  stage) gives the same lines once.
  """
  lines = [ln for r in sorted(c.report() for c in list(_LIVE_COUNTERS)) for ln in r.splitlines()]
  return "\n".join(dict.fromkeys(ln for ln in lines if ln))


SKIP_HINT = "use policy='skip', data.on_error='skip' in a config, to drop/repair and count"


def handle(
    policy: str,
    counter: IssueCounter | None,
    kind: str,
    where: str,
    detail: str = "",
    hint: str = SKIP_HINT,
) -> None:
  """Raise in strict mode; count in skip mode. `hint` tells how to skip (a config key, a flag)."""
  if policy == "strict":
    raise DataError(f"{where}: {kind}{': ' + detail if detail else ''} ({hint})")
  if counter is not None:
    counter.add(kind, where, detail=detail)


def is_number(value: Any) -> bool:
  """An int or float, json's numbers; bool is not one (True would read as 1)."""
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
      value, (bool, np.bool_)
  )


def as_int(value: Any) -> int | None:
  """An id or a size: an int, an integral float or a digit string; None for anything else (1.5
  would truncate onto id 1, NaN and bool are not ids)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, str, np.number)):
    return None
  if isinstance(value, (float, np.floating)) and not float(value).is_integer():
    return None
  try:
    return int(value)
  except (TypeError, ValueError, OverflowError):
    return None


def as_xywh(value: Any) -> np.ndarray | None:
  """A json box [x, y, w, h] of four numbers as float64 (maybe non-finite); None if not one."""
  if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(map(is_number, value)):
    return None
  try:
    return np.asarray([float(v) for v in value], np.float64)
  except OverflowError:  # an integer literal beyond float range: as unusable as inf
    return np.full(4, np.inf)


def describe(value: Any, limit: int = 60) -> str:
  """A short repr for messages (a huge line or value stays one short line)."""
  text = repr(value)
  return text if len(text) <= limit else text[: limit - 3] + "..."


def sanitize_boxes(
    boxes: np.ndarray,
    labels: np.ndarray,
    height: int,
    width: int,
    *,
    policy: str,
    counter: IssueCounter | None,
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
  """Boxes [K, 4] x1y1x2y2 px checked against an image of `height` x `width`.

  Non-finite boxes and boxes of zero or negative size are dropped; boxes that stick out of the
  image are clipped to it (`box_outside_image`); boxes wholly outside are dropped. Each event is
  counted (skip) or raises (strict). Returns (boxes [K', 4] float32, labels [K']).
  """
  with np.errstate(over="ignore"):  # beyond float32 range becomes inf: a non-finite box, counted
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  labels = np.asarray(labels)
  if len(boxes) != len(labels):
    raise ValueError(f"{where}: {len(boxes)} boxes but {len(labels)} labels")
  keep = np.ones(len(boxes), bool)
  finite = np.all(np.isfinite(boxes), axis=1)
  for i in np.nonzero(~finite)[0]:
    handle(policy, counter, "non_finite_box", f"{where} box {i}", str(boxes[i].tolist()))
  keep &= finite
  safe = np.where(finite[:, None], boxes, 0)
  empty = finite & ((safe[:, 2] <= safe[:, 0]) | (safe[:, 3] <= safe[:, 1]))
  for i in np.nonzero(empty)[0]:
    handle(policy, counter, "empty_box", f"{where} box {i}", str(boxes[i].tolist()))
  keep &= ~empty
  # Sub-pixel float slop at the border (x2 = W + 1e-4 after a json round-trip) is not a problem.
  tol = 1e-3
  outside = keep & (
      (safe[:, 0] < -tol)
      | (safe[:, 1] < -tol)
      | (safe[:, 2] > width + tol)
      | (safe[:, 3] > height + tol)
  )
  clipped = np.stack(
      [
          np.clip(safe[:, 0], 0, width),
          np.clip(safe[:, 1], 0, height),
          np.clip(safe[:, 2], 0, width),
          np.clip(safe[:, 3], 0, height),
      ],
      1,
  )
  gone = keep & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
  for i in np.nonzero(outside)[0]:
    kind = "box_wholly_outside_image" if gone[i] else "box_outside_image"
    handle(
        policy, counter, kind, f"{where} box {i}", f"{boxes[i].tolist()} vs image {width}x{height}"
    )
  # within the border slop but empty once clipped (e.g. x1 = x2 - 1e-4 = W + 5e-4): still empty
  for i in np.nonzero(gone & ~outside)[0]:
    handle(policy, counter, "empty_box", f"{where} box {i}", str(boxes[i].tolist()))
  keep &= ~gone
  return clipped[keep].astype(np.float32), labels[keep]


def sanitize_captions(
    captions, *, policy: str, counter: IssueCounter | None, where: str
) -> list[str]:
  """Strips captions; an empty or non-string caption raises (strict) or is dropped and counted."""
  if isinstance(captions, str):
    captions = [captions]
  if not isinstance(captions, (list, tuple)):
    raise ValueError(
        f"{where}: captions must be a string or a list of strings, got {type(captions).__name__}"
    )
  out = []
  for j, c in enumerate(captions):
    if not isinstance(c, str) or not c.strip():
      handle(policy, counter, "empty_caption", f"{where} caption {j}", repr(c)[:40])
      continue
    out.append(c.strip())
  return out


def read_names_file(
    path: str | os.PathLike,
    *,
    policy: str,
    counter: IssueCounter | None,
    key: Callable[[str], str] = str.strip,
    hint: str = SKIP_HINT,
    max_chars: int = 1000,
) -> tuple[list[tuple[int, str]], int]:
  """Names one a line; a "name,count" row gives the name before its first comma.

  Per `policy`: a line that is not UTF-8 (`not_utf8`), a row with an empty name (`empty_name`),
  a line over `max_chars` characters (`line_too_long`), a name whose `key` an earlier line has
  (`duplicate_name`, the first kept). Blank lines and '#' comments are layout, skipped in both
  modes. Returns ([(line number, name)], number of blank / comment lines); raises if no name is
  left.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"names file not found: {path}")
  with open(path, "rb") as f:
    raw_lines = f.read().splitlines()
  names: list[tuple[int, str]] = []
  seen: dict[str, int] = {}
  blank = 0
  for number, raw in enumerate(raw_lines, 1):
    where = f"{path} line {number}"
    try:
      line = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
      handle(policy, counter, "not_utf8", where, f"byte {e.start}: {describe(raw[:40])}", hint)
      continue
    if not line or line.startswith("#"):  # layout: blank lines and '#' comments
      blank += 1
      continue
    if len(line) > max_chars:
      handle(policy, counter, "line_too_long", where, f"{len(line)} > {max_chars} chars", hint)
      continue
    name = line.split(",", 1)[0].strip()
    if not name:
      handle(policy, counter, "empty_name", where, describe(line), hint)
      continue
    k = key(name)
    if k in seen:
      handle(policy, counter, "duplicate_name", where, f"{name!r} as on line {seen[k]}", hint)
      continue
    seen[k] = number
    names.append((number, name))
  if not names:
    raise ValueError(f"{path}: holds no names ({len(raw_lines)} lines, {blank} blank)")
  return names, blank


def read_names(path: str | os.PathLike, what: str = "names file") -> list[str]:
  """`read_names_file` in strict mode -> the names: a concepts file ("name,count" rows) or a class
  list. A bad line (not UTF-8, an empty name, a name given twice) is a DataError naming the file
  and line."""
  hint = f"fix the {what}"
  return [name for _, name in read_names_file(path, policy="strict", counter=None, hint=hint)[0]]
