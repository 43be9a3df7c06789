"""region_top1 against a plain loop."""

import numpy as np
import pytest

from regionclip_jax.evaluation.region_metrics import region_top1


def test_region_top1_matches_loop():
  rng = np.random.default_rng(0)
  n, c = 200, 7
  logits = rng.normal(size=(n, c))
  labels = rng.integers(0, c, size=n)
  logits[np.arange(n), labels] += rng.uniform(0, 2.5, size=n)  # better than chance
  mask = rng.random(n) > 0.1
  base, novel = [0, 1, 2, 3], [4, 5, 6]
  m = region_top1(logits, labels, mask, base, novel)
  for name, group in (("all", range(c)), ("base", base), ("novel", novel)):
    hits = [
        int(np.argmax(logits[i]) == labels[i]) for i in range(n) if mask[i] and labels[i] in group
    ]
    p = sum(hits) / len(hits)
    assert m[f"n_{name}"] == len(hits)
    assert m[name] == pytest.approx(p)
    assert m[f"se_{name}"] == pytest.approx((p * (1 - p) / len(hits)) ** 0.5)
  assert m["n_base"] + m["n_novel"] == m["n_all"]
  assert 0.3 < m["all"] < 0.95


def test_region_top1_batched_padding_and_errors():
  logits = np.zeros((2, 3, 4))
  labels = np.array([[1, 2, 0], [3, 3, 0]])
  logits[0, 0, 1] = logits[0, 1, 0] = logits[1, 0, 3] = 1.0
  mask = np.array([[True, True, False], [True, False, False]])
  m = region_top1(logits, labels, mask, base_ids=[1, 2], novel_ids=[3, 0])
  assert m["n_all"] == 3 and m["all"] == pytest.approx(2 / 3)
  assert m["base"] == pytest.approx(0.5) and m["novel"] == pytest.approx(1.0) and m["se_novel"] == 0
  empty = region_top1(logits, labels, np.zeros_like(mask), [1], [3])
  assert empty["n_all"] == 0 and np.isnan(empty["all"])
  with pytest.raises(ValueError, match="out of range"):
    region_top1(np.zeros((2, 3)), np.array([0, 3]))
  with pytest.raises(ValueError, match="leading dims"):
    region_top1(np.zeros((2, 3)), np.array([0, 1, 2]))


def test_paired_difference_matches_a_paired_t_test():
  from scipy import stats
  from regionclip_jax.evaluation.region_metrics import paired_difference, region_correct

  rng = np.random.default_rng(3)
  a = rng.random(500) < 0.6
  b = rng.random(500) < 0.5
  d, se = paired_difference(a, b)
  assert d == pytest.approx(a.mean() - b.mean())
  t = stats.ttest_rel(a.astype(float), b.astype(float)).statistic  # t = mean(d) / se
  assert d / se == pytest.approx(t, rel=1e-9)
  with pytest.raises(ValueError, match="differ in length"):
    paired_difference(a, b[:10])
  logits = np.eye(3)[[0, 1, 2, 0]][None] + 0.0  # [1, 4, 3]
  correct, labels = region_correct(logits, np.array([[0, 2, 2, 1]]), np.array([[1, 1, 1, 0]], bool))
  assert correct.tolist() == [True, False, True] and labels.tolist() == [0, 2, 2]
