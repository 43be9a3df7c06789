"""Losses and pseudo-labels: hand-computed cases + a PyTorch port of the official code."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionclip_jax.pretrain import losses
from regionclip_jax.pretrain.pseudo_labels import pseudo_concept_labels

E = math.e


def test_distill_hand_case_and_dropped_rows():
  c = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  s = jnp.array([[[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]]])  # row 1 dropped
  p = jnp.array([[[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]]])
  keep = jnp.array([[True, False, True]])
  got = losses.region_distill_loss(s, c, p, keep, temperature=1.0)
  row0 = -math.log(2) - 0.5 + math.log(1 + E)  # KL([.5,.5] || softmax([1,0]))
  row2 = math.log(1 + E) - 1.0  # zero target entry contributes 0
  np.testing.assert_allclose(got, (row0 + row2) / 2, rtol=1e-6)


def test_contrastive_hand_case_several_positives():
  s = jnp.array([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
  t_emb = jnp.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
  targets = jnp.array([[0, 0, 1, 1]])
  keep = jnp.array([[True, True, True, False]])  # last region dropped: not a row, not a column
  got = losses.region_contrastive_loss(s, t_emb, targets, keep, temperature=1.0)
  r01 = -math.log(2 * E / (2 * E + 1))
  r2 = -math.log(E / (E + 2))
  np.testing.assert_allclose(got, (2 * r01 + r2) / 3, rtol=1e-6)


def test_all_regions_dropped_is_zero_and_finite_grad():
  s = jnp.ones((2, 3, 4))
  keep = jnp.zeros((2, 3), bool)
  p = jnp.full((2, 3, 5), 0.2)
  c = jnp.eye(5, 4)
  t = jnp.zeros((2, 3), jnp.int32)

  def total(s):
    return losses.region_distill_loss(s, c, p, keep) + losses.region_contrastive_loss(
        s, jnp.ones((2, 3, 4)), t, keep
    )

  val, g = jax.value_and_grad(total)(s)
  assert float(val) == 0.0
  assert np.all(np.asarray(g) == 0.0)


def test_group_without_kept_regions_is_left_out_of_mean():
  c = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  s = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])
  p = jnp.array([[[1.0, 0.0]], [[1.0, 0.0]]])
  keep = jnp.array([[True], [False]])
  got = losses.region_distill_loss(s, c, p, keep, temperature=1.0)
  np.testing.assert_allclose(got, math.log(1 + E) - 1.0, rtol=1e-6)


def test_image_text_hand_case_and_padding():
  img = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  txt = jnp.array([[1.0, 0.0], [1.0, 0.0], [7.0, 7.0]])
  got = losses.image_text_loss(img, txt, valid=jnp.array([True, True, False]), temperature=1.0)
  # logits [[1, 1], [0, 0]]: rows: -log(e/(2e)), -log(1/2); cols: -log(e/(e+1)), -log(1/(e+1))
  row = (math.log(2) + math.log(2)) / 2
  col = (-math.log(E / (E + 1)) - math.log(1 / (E + 1))) / 2
  np.testing.assert_allclose(got, (row + col) / 2, rtol=1e-6)


def test_pseudo_labels_threshold_and_fallback():
  c = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  # group 0: region 0 confident, region 1 ambiguous (p = .5/.5), region 2 padding.
  # group 1: all ambiguous -> fallback keeps every valid region.
  t = jnp.array([[[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]], [[1.0, 1.0], [2.0, 2.0], [0.0, 1.0]]])
  valid = jnp.array([[True, True, False], [True, True, False]])
  pl = pseudo_concept_labels(t, c, valid, threshold=0.6)
  np.testing.assert_array_equal(pl.keep, [[True, False, False], [True, True, False]])
  assert int(pl.targets[0, 0]) == 0 and int(pl.targets[1, 2]) == 1
  np.testing.assert_allclose(pl.probs[0, 1], [0.5, 0.5], rtol=1e-6)
  np.testing.assert_allclose(pl.probs.sum(-1), 1.0, rtol=1e-6)


# --- PyTorch port of the official region_concept_matching / image_text_matching ----------------


def _torch_reference(teacher, student, concepts, glob, text, thres, tau=0.01):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  distill, contrast = [], []
  for g in range(teacher.shape[0]):
    tf = torch.tensor(teacher[g], dtype=torch.float64)
    sf = torch.tensor(student[g], dtype=torch.float64)
    ce = torch.tensor(concepts, dtype=torch.float64)
    tf = tf / tf.norm(dim=-1, keepdim=True)
    cn = ce / ce.norm(dim=-1, keepdim=True)
    scores = F.softmax(tf @ cn.t() / tau, dim=1)
    max_s, max_i = scores.max(dim=1)
    keep = max_s > thres
    if keep.nonzero().size(0) == 0:
      keep = max_s > 0.0
    tgt = max_i[keep]
    temb = ce[tgt]
    label = (tgt.view(-1, 1) == tgt.view(1, -1)).double()
    scores = scores[keep]
    ks = sf[keep]
    ks = ks / ks.norm(dim=-1, keepdim=True)
    cls = ks @ cn.t() / tau
    distill.append(F.kl_div(F.softmax(cls, dim=1).log(), scores, reduction="batchmean"))
    temb = temb / temb.norm(dim=-1, keepdim=True)
    x = ks @ temb.t() / tau
    x = x - x.max(dim=1, keepdim=True)[0]
    probs = x.exp() / x.exp().sum(dim=-1, keepdim=True)
    contrast.append((-torch.log((label * probs).sum(-1))).mean())
  gi = torch.tensor(glob, dtype=torch.float64)
  ti = torch.tensor(text, dtype=torch.float64)
  gi = gi / gi.norm(dim=-1, keepdim=True)
  ti = ti / ti.norm(dim=-1, keepdim=True)
  m = gi @ ti.t() / tau
  tgt = torch.arange(m.shape[0])
  it = (F.cross_entropy(m, tgt) + F.cross_entropy(m.t(), tgt)) / 2
  return (float(torch.stack(distill).mean()), float(torch.stack(contrast).mean()), float(it))


def test_matches_pytorch_port_of_official_code():
  rng = np.random.default_rng(0)
  g, r, d, c = 3, 12, 8, 6
  concepts = rng.normal(size=(c, d))
  # Teacher regions near concepts so that some pass the threshold and some do not.
  idx = rng.integers(0, c, size=(g, r))
  teacher = concepts[idx] + rng.normal(scale=2.0, size=(g, r, d))
  # group 2: every region halfway between two concepts (p ~ .5/.5): nothing passes -> fallback
  unit = concepts / np.linalg.norm(concepts, axis=-1, keepdims=True)
  teacher[2] = unit[0] + unit[1] + rng.normal(scale=1e-4, size=(r, d))
  student = teacher + rng.normal(scale=0.5, size=(g, r, d))
  glob = rng.normal(size=(5, d))
  text = glob + rng.normal(scale=0.3, size=(5, d))
  thres = 0.7
  want = _torch_reference(teacher, student, concepts, glob, text, thres)

  f32 = lambda a: jnp.asarray(a, jnp.float32)
  pl = pseudo_concept_labels(f32(teacher), f32(concepts), jnp.ones((g, r), bool), threshold=thres)
  assert 0 < int(pl.keep[:2].sum()) < 2 * r, "want some regions kept and some dropped"
  assert bool(pl.keep[2].all()), "group 2 exercises the keep-all fallback"
  got_d = losses.region_distill_loss(f32(student), f32(concepts), pl.probs, pl.keep)
  got_c = losses.region_contrastive_loss(
      f32(student), f32(concepts)[pl.targets], pl.targets, pl.keep
  )
  got_i = losses.image_text_loss(f32(glob), f32(text))
  np.testing.assert_allclose([got_d, got_c, got_i], want, rtol=2e-4, atol=1e-5)
