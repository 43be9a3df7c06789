"""Balanced sampler: detectron2's counts, group membership, uniqueness, determinism, uniformity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionclip_jax.ops.sampling import subsample_labels


def _labels(rng, n, n_fg, n_bg, bg=5):
  lab = np.full(n, -1, np.int32)
  perm = rng.permutation(n)
  lab[perm[:n_fg]] = rng.integers(0, bg, n_fg)  # classes 0..bg-1 are foreground
  lab[perm[n_fg : n_fg + n_bg]] = bg
  return lab


@pytest.mark.parametrize("n_fg,n_bg", [(3, 100), (40, 100), (40, 5), (0, 0), (0, 7)])
def test_counts_membership_uniqueness(n_fg, n_bg):
  rng = np.random.default_rng(n_fg * 1000 + n_bg)
  lab = _labels(rng, 150, n_fg, n_bg)
  f = jax.jit(subsample_labels, static_argnums=(2, 3, 4))
  idx, ok, is_pos = (np.asarray(a) for a in f(jax.random.key(0), lab, 32, 0.25, 5))
  exp_pos = min(n_fg, int(32 * 0.25))
  exp_neg = min(n_bg, 32 - exp_pos)
  assert ok.sum() == exp_pos + exp_neg and is_pos.sum() == exp_pos
  assert np.all(ok[: exp_pos + exp_neg]) and not np.any(ok[exp_pos + exp_neg :])
  sel = idx[ok]
  assert len(set(sel.tolist())) == len(sel)
  assert np.all((lab[idx[is_pos]] != -1) & (lab[idx[is_pos]] != 5))
  assert np.all(lab[idx[ok & ~is_pos]] == 5)
  assert np.all(idx[~ok] == 0)


def test_deterministic_valid_mask_and_uniform():
  rng = np.random.default_rng(3)
  lab = _labels(rng, 60, 20, 30)
  valid = np.ones(60, bool)
  valid[np.nonzero(lab == 5)[0][:10]] = False  # padding: never drawn
  draw = jax.jit(jax.vmap(lambda k: subsample_labels(k, lab, 16, 0.25, 5, valid=valid)))
  keys = jax.random.split(jax.random.key(1), 4000)
  idx, ok, pos = (np.asarray(a) for a in draw(keys))
  a = subsample_labels(keys[0], lab, 16, 0.25, 5, valid=valid)
  np.testing.assert_array_equal(np.asarray(a[0]), idx[0])  # same key, same draw
  assert not np.array_equal(idx[0], idx[1])
  assert not np.any(np.isin(idx[ok], np.nonzero(~valid)[0]))
  # each of the 20 positives should be chosen 4000 * 4 / 20 = 800 times (binomial sd ~ 25)
  fg = np.nonzero((lab != -1) & (lab != 5))[0]
  counts = np.bincount(idx[pos], minlength=60)[fg]
  assert np.all(np.abs(counts - 800) < 130), counts
  bg = np.nonzero((lab == 5) & valid)[0]  # 20 valid negatives, 12 slots: 2400 each
  counts = np.bincount(idx[ok & ~pos], minlength=60)[bg]
  assert np.all(np.abs(counts - 2400) < 200), counts


def test_errors():
  with pytest.raises(ValueError, match=r"\[P\]"):
    subsample_labels(jax.random.key(0), jnp.zeros((2, 3), jnp.int32), 4, 0.5, 0)
  with pytest.raises(ValueError, match="valid"):
    subsample_labels(
        jax.random.key(0), jnp.zeros((3,), jnp.int32), 4, 0.5, 0, valid=jnp.ones(4, bool)
    )
