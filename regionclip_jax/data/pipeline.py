"""The grain input pipeline: shard -> shuffle -> repeat -> transforms -> read -> batch.

Determinism: the order and every random augmentation are functions of (seed, global index), so
two runs with the same seed see the same batches, and an iterator restored from `get_state()`
(a json-serialisable dict, saved by orbax next to the train state) continues with exactly the
records the uninterrupted run would have produced. Multi-host: each process reads the slice
`[process_index::process_count]` of the source and batches `batch_size` records of its own
(`batch_size` is per process).

Worker processes (`num_workers` > 0): see `data/workers.py`.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import grain
import jax

from regionclip_jax.data.workers import WorkerPipelineIterator, batch_from_workers, in_workers


def _process_info() -> tuple[int, int]:
  return jax.process_index(), jax.process_count()


def make_dataset(
    source,
    transforms: Sequence = (),
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_by_process: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.MapDataset:
  """The random-access part of the pipeline (grain.MapDataset, before batching).

  num_epochs None repeats forever; each epoch is reshuffled (grain reseeds per epoch).
  Sharding: explicit (shard_index, shard_count) wins; else by jax process when
  `shard_by_process`.
  """
  if len(source) == 0:
    raise ValueError(f"make_pipeline: source {source!r} is empty")
  ds = grain.MapDataset.source(source)
  if shard_index is None and shard_by_process:
    shard_index, shard_count = _process_info()
  if shard_index is not None:
    shard_count = shard_count or 1
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"make_pipeline: shard_index {shard_index} not in [0, {shard_count})")
    if len(source) < shard_count:
      raise ValueError(
          f"make_pipeline: {len(source)} records cannot be split over {shard_count} shards"
      )
    # Equal shard lengths so that every process runs the same number of steps.
    per = len(source) // shard_count
    ds = ds[shard_index * per : (shard_index + 1) * per]
  ds = ds.seed(seed)
  if shuffle:
    ds = ds.shuffle()
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  for t in transforms:
    if isinstance(t, grain.transforms.RandomMap):
      ds = ds.random_map(t)
    elif isinstance(t, grain.transforms.Map):
      ds = ds.map(t)
    elif isinstance(t, grain.transforms.Filter):
      ds = ds.filter(t)
    elif callable(t):
      ds = ds.map(t)
    else:
      raise TypeError(
          f"make_pipeline: transform {t!r} is not a grain Map/RandomMap/Filter or callable"
      )
  return ds


def make_pipeline(
    source,
    transforms: Sequence = (),
    batch_size: int = 1,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_by_process: bool = True,
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool = True,
    num_threads: int = 4,
    prefetch_buffer_size: int = 64,
    batch_prefetch: int = 2,
    num_workers: int = 0,
    worker_buffer_size: int = 4,
):
  """A grain iterator of batches (dicts of stacked numpy arrays [batch_size, ...]).

  Records that a source or transform turned into None (skipped bad records) are dropped before
  batching, so every batch is full. `num_threads` threads read and transform records ahead
  (`prefetch_buffer_size` records); `batch_prefetch` > 0 adds a background thread that keeps
  that many batches ready. The returned iterator has `get_state()` / `set_state(state)`.

  `num_workers` > 0 moves reading and transforms into that many processes (module docstring):
  the same batches, without the GIL between them. Then `num_threads` threads run in each
  worker, `prefetch_buffer_size` records are split among the workers, and each worker keeps
  up to `worker_buffer_size` finished records in shared memory for the main process, which
  only batches. Records must then be dicts, and the source and transforms picklable (grain
  sends them to the workers). `close()` the iterator to stop the workers (else at exit).
  """
  ds = make_dataset(
      source,
      transforms,
      seed=seed,
      shuffle=shuffle,
      num_epochs=num_epochs,
      shard_by_process=shard_by_process,
      shard_index=shard_index,
      shard_count=shard_count,
  )
  if num_workers < 0:
    raise ValueError(f"make_pipeline: num_workers must be >= 0, got {num_workers}")
  if num_workers == 0:
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
  else:
    it_ds = in_workers(ds, num_workers, num_threads, prefetch_buffer_size, worker_buffer_size)
  # With workers, padded images travel cropped (see _crop_padding) and are padded into the batch.
  batch_fn = batch_from_workers if num_workers else None
  it_ds = it_ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)
  if batch_prefetch:
    it_ds = grain.experimental.ThreadPrefetchIterDataset(it_ds, prefetch_buffer_size=batch_prefetch)
  return iter(it_ds) if num_workers == 0 else WorkerPipelineIterator(iter(it_ds), num_workers)


class CachedSource:
  """Keeps every record of `source` after its first read (thread-safe), so that epochs after
  the first cost no generation or decoding: for the shapes world (deterministic, ~12 KiB a
  64 px scene) this takes generation off the training loop's critical path.

  Records must not be mutated in place by transforms (ours copy); None records are cached too.
  """

  def __init__(self, source):
    self.source = source
    self._cache: dict[int, Any] = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    index = int(index)
    hit = self._cache.get(index, _MISSING)
    if hit is not _MISSING:
      return hit
    record = self.source[index]
    with self._lock:
      self._cache.setdefault(index, record)
    return record

  def __getattr__(self, name):  # expose the wrapped source's metadata (concepts, class_names...)
    if name in ("source", "_cache", "_lock"):
      raise AttributeError(name)
    return getattr(self.source, name)

  def __getstate__(self) -> dict:
    # Into a worker process without the cache: each worker fills its own (its records only).
    return {"source": self.source}

  def __setstate__(self, state: dict) -> None:
    self.source = state["source"]
    self._cache, self._lock = {}, threading.Lock()


_MISSING = object()
