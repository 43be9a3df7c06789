"""Grain worker processes for the input pipeline (`make_pipeline(num_workers=n)`, grain's
`mp_prefetch`).

Worker processes (`num_workers` > 0, grain's `mp_prefetch`): worker i reads and transforms the
records i, i + n, i + 2n, ... of the global order and the main process takes them in turn, so
the batches are the same as with `num_workers=0` (skipped records included: a worker sends a
marker in their place, dropped in the main process). The iterator's state is the one global
position, as without workers, so a state saved with any worker count (0 included) resumes
with any other. Data issues counted in a worker (corrupt images, ...) are sent back with
the records and added to the main process's counters, so `IssueCounter.report()` and
`validation.report_all()` still see them. Sources and transforms must pickle: the COCO, TSV,
JSONL and shapes-world sources, `CachedSource` and the transforms here do.
"""

from __future__ import annotations

import copyreg
import logging
import os
import threading
import uuid
import weakref
from typing import Sequence

import grain
import numpy as np
from absl import flags

from regionclip_jax.data.validation import IssueCounter

_SKIPPED = "__skipped_record__"  # key of the marker a worker sends for a skipped (None) record
_ISSUES = "__data_issues__"  # key of the issue counts a worker sends along with a record
_PADDED = "__padded_to__"  # (H, W) of a record whose image travels without its zero padding
# Arrays below this size are pickled with the record; images go through shared memory
# (grain's default, 0, would also make a shared-memory block per token array and id).
_MIN_SHM_BYTES = 64 * 1024


def in_workers(ds, num_workers, num_threads, prefetch_buffer_size, worker_buffer_size):
  """`ds` read in `num_workers` grain worker processes, in the order one process would read it."""
  if not flags.FLAGS.is_parsed():
    # grain 0.2.18 reads an absl flag when it starts workers and fails in programs that do not
    # parse absl flags (tests, benchmarks, notebooks): google/grain#1355, fixed after 0.2.18.
    # Defaults are what those programs get anyway; absl.app still parses argv later.
    flags.FLAGS.mark_as_parsed()
  per_worker = max(2 * num_threads, -(-prefetch_buffer_size // num_workers))
  it_ds = _WorkerRecords(ds).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=per_worker)
  )
  it_ds = grain.experimental.WithOptionsIterDataset(
      it_ds, grain.experimental.DatasetOptions(min_shm_size=_MIN_SHM_BYTES)
  )
  it_ds = it_ds.mp_prefetch(
      grain.multiprocessing.MultiprocessingOptions(
          num_workers=num_workers, per_worker_buffer_size=worker_buffer_size
      ),
      worker_init_fn=_init_worker,
  )
  return it_ds.map(_from_worker).filter(_not_skipped)


class WorkerPipelineIterator:
  """The batch iterator of a pipeline with workers, with the state of one without them.

  grain's state of `mp_prefetch` holds one position per worker, and grain would load it into a
  pipeline with another worker count without complaint, at the wrong records. Since worker i
  reads the records i, i + n, ... and every record reaches the main process (skipped ones as
  markers), the per-worker positions are a function of the one global position `next_index`,
  which is also what the pipeline without workers saves: a state from any worker count (0
  included) resumes with any other.
  """

  def __init__(self, iterator, num_workers: int):
    self._it, self._n = iterator, num_workers

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._it)

  def get_state(self) -> dict:
    state = self._it.get_state()
    positions = [s and s.get("next_index") for s in state.get("iterators_in_use_states", ())]
    if len(positions) != self._n or any(p is None for p in positions):
      raise RuntimeError(f"make_pipeline: unexpected grain worker state {str(state)[:200]}")
    return {"next_index": int(sum(positions))}

  def set_state(self, state: dict) -> None:
    if not isinstance(state, dict) or "next_index" not in state:
      raise ValueError(
          "make_pipeline: expected a state {'next_index': k} saved by make_pipeline, got "
          f"{str(state)[:200]}"
      )
    k, n = int(state["next_index"]), self._n
    self._it.set_state(
        {
            "next_index_in_cycle": k % n,
            "next_index_in_datasets": n,
            "iterators_in_use_indices": list(range(n)),
            # worker i has produced the records j < k with j % n == i
            "iterators_in_use_states": [{"next_index": (k - i + n - 1) // n} for i in range(n)],
            "exhausted": [0] * n,
            "future_states": {},
        }
    )

  def close(self) -> None:
    self._it.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _init_worker(index: int, count: int) -> None:
  del index, count
  try:
    import cv2  # optional: the cv2 resize backend
  except ImportError:
    return
  # A worker is meant to fill one core; cv2's own thread pool per worker would oversubscribe.
  cv2.setNumThreads(1)


class _WorkerRecords(grain.MapDataset):
  """The last step inside a worker: a skipped record (None) becomes a marker instead of
  vanishing, so that the main process's round-robin over the workers keeps the global order,
  and the issues counted in this process since the previous record travel with the record."""

  def __init__(self, parent: grain.MapDataset):
    super().__init__(parent)

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return "_WorkerRecords"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    record = self._parent[index]
    out = {_SKIPPED: np.bool_(True)} if record is None else _crop_padding(dict(record))
    issues = _drain_worker_issues()
    if issues:
      out[_ISSUES] = issues
    return out


def _crop_padding(record: dict) -> dict:
  """A record laid out as NormalizeAndPad leaves it (image zero outside [:h, :w], image_mask the
  [:h, :w] rectangle) -> its valid image crop, no mask, and `_PADDED` = (H, W).

  Lossless: the layout is checked, not assumed (~0.5 ms), and anything else travels unchanged.
  At 800 px in a 1344 pad it moves 2.6 MB through shared memory instead of 7.2 MB (uint8 image
  and bool mask), which halved the per-record cost that worker processes add on top of the work.
  """
  image, mask, size = record.get("image"), record.get("image_mask"), record.get("image_size")
  if not (
      isinstance(image, np.ndarray)
      and isinstance(mask, np.ndarray)
      and image.ndim == 3
      and mask.dtype == bool
      and mask.shape == image.shape[:2]
      and np.shape(size) == (2,)
  ):
    return record
  h, w = int(size[0]), int(size[1])
  H, W = mask.shape
  if not (0 < h <= H and 0 < w <= W) or (h, w) == (H, W):
    return record
  if not mask[:h, :w].all() or mask[h:].any() or mask[:h, w:].any():
    return record
  if image[h:].any() or image[:h, w:].any():
    return record
  record["image"] = np.ascontiguousarray(image[:h, :w])
  record["image_mask"] = None  # rebuilt from image_size; the key stays for the batch's key order
  record[_PADDED] = (H, W)
  return record


def batch_from_workers(records: Sequence[dict]) -> dict:
  """Batches worker records: cropped images padded straight into the batch (one copy), masks
  rebuilt from `image_size`; every other leaf stacked as grain's default batching does."""
  pads = [r.get(_PADDED) for r in records]
  if pads[0] is None or any(p != pads[0] for p in pads):
    if any(p is not None for p in pads):  # mixed: pad each record back, then stack
      records = [_uncrop(r) if p is not None else r for r, p in zip(records, pads)]
    return _stack(records)
  (H, W), first = pads[0], records[0]["image"]
  image = np.zeros((len(records), H, W) + first.shape[2:], first.dtype)
  mask = np.zeros((len(records), H, W), bool)
  for i, r in enumerate(records):
    h, w = r["image"].shape[:2]
    image[i, :h, :w] = r["image"]
    mask[i, :h, :w] = True
  batch = {}
  for k in records[0]:  # the record's key order, as grain's batching keeps it
    if k == "image":
      batch[k] = image
    elif k == "image_mask":
      batch[k] = mask
    elif k != _PADDED:
      batch[k] = _stack([r[k] for r in records])
  return batch


def _uncrop(record: dict) -> dict:
  record = dict(record)
  H, W = record.pop(_PADDED)
  crop = record["image"]
  h, w = crop.shape[:2]
  record["image"] = np.zeros((H, W) + crop.shape[2:], crop.dtype)
  record["image"][:h, :w] = crop
  record["image_mask"] = np.zeros((H, W), bool)  # replaces the None left by _crop_padding
  record["image_mask"][:h, :w] = True
  return record


def _stack(values: Sequence):
  if isinstance(values[0], dict):
    return {k: _stack([v[k] for v in values]) for k in values[0]}
  return np.stack([np.asarray(v) for v in values])


def _from_worker(record: dict) -> dict:
  issues = record.pop(_ISSUES, None)
  if issues:
    _add_worker_issues(issues)
  return record


def _not_skipped(record: dict) -> bool:
  return _SKIPPED not in record


# IssueCounter holds a lock, so it does not pickle by itself. Pickled (into a worker), a counter
# becomes a copy with the same counts and a token naming the original; counts the copy gains in
# the worker are forwarded with the records and added to the original in the main process.
_FORWARD_LOCK = threading.Lock()
_ORIGINALS: "weakref.WeakValueDictionary[str, IssueCounter]" = weakref.WeakValueDictionary()
_COPIES: "weakref.WeakValueDictionary[str, IssueCounter]" = weakref.WeakValueDictionary()
_SENT: dict[str, tuple[dict, dict]] = {}  # token -> (counts, examples) already accounted for


def _reduce_counter(counter: IssueCounter):
  token = counter.__dict__.get("_forward_token")
  if token is None:
    token = counter._forward_token = f"{os.getpid()}-{uuid.uuid4().hex}"
    with _FORWARD_LOCK:
      _ORIGINALS[token] = counter
  return _rebuild_counter, (counter.name, token, counter.counts, counter.examples)


def _rebuild_counter(name: str, token: str, counts: dict, examples: dict) -> IssueCounter:
  counter = IssueCounter(name)
  for kind, n in counts.items():
    _add_counts(counter, kind, n, examples.get(kind, []))
  counter._forward_token = token
  with _FORWARD_LOCK:
    _COPIES[token] = counter
    _SENT[token] = (dict(counts), {k: len(v) for k, v in examples.items()})
  return counter


copyreg.pickle(IssueCounter, _reduce_counter)


def _drain_worker_issues() -> tuple:
  """(token, name, kind, new count, new examples) for what copies counted since the last call."""
  if not _COPIES:  # the main process, or a worker whose dataset holds no counter
    return ()
  out = []
  with _FORWARD_LOCK:
    for token, counter in list(_COPIES.items()):
      sent_counts, sent_examples = _SENT[token]
      counts, examples = counter.counts, None
      for kind, n in counts.items():
        new = n - sent_counts.get(kind, 0)
        if new <= 0:
          continue
        examples = examples if examples is not None else counter.examples
        fresh = examples.get(kind, [])[sent_examples.get(kind, 0) :]
        out.append((token, counter.name, kind, new, tuple(fresh)))
        sent_counts[kind] = n
        sent_examples[kind] = sent_examples.get(kind, 0) + len(fresh)
  return tuple(out)


def _add_worker_issues(issues) -> None:
  for token, name, kind, n, examples in issues:
    counter = _ORIGINALS.get(token)
    if counter is None:  # the source was dropped while its pipeline still ran: say so at least
      logging.getLogger(__name__).warning("data issue in a worker: %s: %s x%d", name, kind, n)
      continue
    _add_counts(counter, kind, n, examples)


def _add_counts(counter: IssueCounter, kind: str, n: int, examples: Sequence[str]) -> None:
  """n events of `kind` with these examples (`add` keeps one example a call, up to three)."""
  if not examples:
    # A worker sends its first three examples of a kind, so the original holds three by now
    # and this `where` is not kept.
    counter.add(kind, "(worker process)", n)
    return
  counter.add(kind, examples[0], n - len(examples) + 1)
  for where in examples[1:]:
    counter.add(kind, where)
