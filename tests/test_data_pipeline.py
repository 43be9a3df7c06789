"""grain pipeline: determinism, exact resume through json, sharding, skipped records, epochs."""

import json

import numpy as np
import pytest

from regionclip_jax.data import transforms as T
from regionclip_jax.data.pipeline import CachedSource, make_dataset, make_pipeline
from regionclip_jax.data.shapes_world import ShapesWorld


def take(iterator, n: int) -> list:
  """The next `n` batches as a list."""
  return [next(iterator) for _ in range(n)]


def batch_equal(a: dict, b: dict) -> bool:
  if a.keys() != b.keys():
    return False
  return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def state_to_json(state) -> str:
  """Iterator state -> json text; raises if the state is not json-clean (orbax saves it as json)."""
  return json.dumps(state, sort_keys=True)


def state_from_json(text: str):
  return json.loads(text)


def _tok(texts, context_length=77):
  return np.array([[len(t)] + [0] * (context_length - 1) for t in texts], np.int32)


class _Indexed:
  """Source whose record is its own index; None marks a bad record dropped in skip mode."""

  def __init__(self, n, bad=()):
    self.n, self.bad = n, set(bad)

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return None if i in self.bad else {"i": np.int64(i)}


def _pipe(**kw):
  args = dict(
      source=ShapesWorld(20, seed=2),
      transforms=T.shapes_world_transforms(flip=True, tokenize_fn=_tok),
      batch_size=4,
      seed=11,
      shard_by_process=False,
      num_threads=2,
  )
  args.update(kw)
  return make_pipeline(**args)


def test_static_shapes_and_determinism():
  a, b = take(_pipe(), 3), take(_pipe(), 3)
  assert all(batch_equal(x, y) for x, y in zip(a, b))
  assert a[0]["image"].shape == (4, 64, 64, 3) and a[0]["caption_tokens"].shape == (4, 77)
  assert a[0]["boxes"].shape == (4, 8, 4) and a[0]["box_mask"].dtype == bool
  c = take(_pipe(seed=12), 1)
  assert not np.array_equal(c[0]["image_id"], a[0]["image_id"]) or not batch_equal(c[0], a[0])


def test_resume_from_json_state_sees_the_same_records():
  it = _pipe()
  take(it, 3)  # mid-epoch: 12 of 20 records
  state = state_to_json(it.get_state())
  expected = take(it, 8)  # crosses two epoch boundaries, random flips included
  resumed = _pipe()
  resumed.set_state(state_from_json(state))
  got = take(resumed, 8)
  assert all(batch_equal(x, y) for x, y in zip(expected, got))


def test_epochs_reshuffle_and_cover_everything():
  it = make_pipeline(_Indexed(12), batch_size=4, seed=0, shard_by_process=False, num_epochs=2)
  ids = np.concatenate([b["i"] for b in it])
  assert len(ids) == 24
  e1, e2 = ids[:12], ids[12:]
  assert sorted(e1) == sorted(e2) == list(range(12)) and not np.array_equal(e1, e2)
  plain = make_pipeline(
      _Indexed(12), batch_size=4, seed=0, shard_by_process=False, num_epochs=1, shuffle=False
  )
  assert np.concatenate([b["i"] for b in plain]).tolist() == list(range(12))


def test_shards_are_disjoint_and_cover():
  seen = []
  for k in range(3):
    it = make_pipeline(
        _Indexed(31), batch_size=1, seed=5, num_epochs=1, shard_index=k, shard_count=3
    )
    seen.append({int(b["i"][0]) for b in it})
  assert all(len(s) == 10 for s in seen)  # equal lengths: 31 // 3, the last record left out
  assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and len(set().union(*seen)) == 30


def test_skipped_records_never_reach_a_batch():
  bad = {1, 4, 5, 9}
  it = make_pipeline(_Indexed(20, bad), batch_size=4, seed=1, shard_by_process=False, num_epochs=1)
  batches = list(it)
  ids = np.concatenate([b["i"] for b in batches])
  assert all(len(b["i"]) == 4 for b in batches)
  assert not set(ids.tolist()) & bad and len(ids) == 16


def test_shard_by_process_single_host_and_errors():
  ds = make_dataset(_Indexed(8), shuffle=False, num_epochs=1)  # jax: process 0 of 1
  assert [ds[i]["i"] for i in range(len(ds))] == list(range(8))
  with pytest.raises(ValueError, match="empty"):
    make_dataset(_Indexed(0), shard_by_process=False)
  with pytest.raises(ValueError, match="shard_index 3 not in"):
    make_dataset(_Indexed(8), shard_index=3, shard_count=2)


def test_cached_source_same_batches_and_reads_once():
  calls = []

  class Counting(_Indexed):

    def __getitem__(self, i):
      calls.append(i)
      return super().__getitem__(i)

  src = CachedSource(Counting(10, bad={3}))
  a = take(make_pipeline(src, batch_size=3, seed=4, shard_by_process=False, num_threads=2), 9)
  b = take(make_pipeline(_Indexed(10, bad={3}), batch_size=3, seed=4, shard_by_process=False), 9)
  assert all(batch_equal(x, y) for x, y in zip(a, b))
  assert (
      sorted(set(calls)) == list(range(10)) and len(calls) <= 10 + 4
  )  # a race may read twice, no more
  world = CachedSource(ShapesWorld(5))
  assert world.concepts == ShapesWorld(5).concepts and np.array_equal(
      world[2]["image"], world[2]["image"]
  )


def test_default_tokenizer_integration():
  """Shapes-world captions through the models area's OpenAI-id tokenizer (skipped until it exists)."""
  tok = pytest.importorskip("regionclip_jax.models.tokenizer")
  try:
    tok.tokenize(["a star."])
  except ImportError as e:  # the tokenizer's own dependencies, owned by the models area
    pytest.skip(f"models tokenizer not usable here: {e}")
  tr = T.shapes_world_transforms(tokenize_fn=None)
  batch = next(
      make_pipeline(ShapesWorld(8, seed=0), tr, 4, seed=0, shard_by_process=False, num_epochs=1)
  )
  tokens = batch["caption_tokens"]
  assert tokens.shape == (4, 77) and tokens.dtype == np.int32
  assert np.all(tokens[:, 0] == 49406) and np.all(tokens.max(axis=1) == 49407)
  del tok
