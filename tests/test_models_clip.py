"""CLIP module contracts: configs, conversion errors, region split, frozen BN, bf16, input checks."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from regionclip_jax.models import clip, convert_openai
from regionclip_jax.models.layers import interpolate_pos_grid

TINY = clip.PRESETS["tiny_rn"]
TINY_VIT = clip.PRESETS["tiny_vit"]
# RN50-shaped (4 stages, 224 px, 7x7 attnpool) but narrow, so a 224 px forward is cheap.
NARROW_224 = clip.CLIPConfig(
    32, clip.ResNetConfig((1, 1, 1, 1), 8, 4, 224), clip.TextConfig(width=64, heads=1, layers=1)
)


@pytest.fixture(scope="module")
def tiny_params():
  return clip.init_params(TINY, seed=0)


def _apply(cfg, params, *args, method, **kw):
  # jitted: eager Flax apply compiles every primitive separately, which is far slower on CPU.
  fn = jax.jit(lambda p, *a: clip.CLIP(cfg, **kw).apply({"params": p}, *a, method=method))
  return fn(params, *args)


def _shape_sd(cfg):
  """OpenAI-named shape-only state dict (no memory even for RN50x16)."""
  out = {}
  for path, s in traverse_util.flatten_dict(clip.param_shapes(cfg)).items():
    key, kind = convert_openai.flax_path_to_openai(path)
    out[key] = jax.ShapeDtypeStruct(convert_openai._torch_shape(s.shape, kind), s.dtype)
  return out


@pytest.mark.parametrize("name", sorted(clip.PRESETS))
def test_config_from_state_dict_recovers_presets(name):
  cfg = clip.PRESETS[name]
  want = cfg
  if cfg.is_resnet:  # a compute setting, not in the weights: state dicts get the default fold
    want = dataclasses.replace(
        cfg, vision=dataclasses.replace(cfg.vision, fold_attention_pool=True)
    )
  assert clip.config_from_state_dict(_shape_sd(cfg)) == want
  assert clip.CLIPConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "name, key",
    [
        ("tiny_vit", "visual.positional_embedding"),
        ("tiny_rn", "visual.attnpool.positional_embedding"),
    ],
)
def test_config_from_state_dict_rejects_a_non_square_position_grid(name, key):
  sd = _shape_sd(clip.PRESETS[name])
  rows, width = sd[key].shape
  sd[key] = jax.ShapeDtypeStruct((rows + 1, width), sd[key].dtype)
  with pytest.raises(
      ValueError, match=re.escape(f"{key!r} has {rows + 1} rows, not a square grid")
  ):
    clip.config_from_state_dict(sd)


def test_rn50_sizes():
  cfg = clip.PRESETS["RN50"]
  shapes = traverse_util.flatten_dict(clip.param_shapes(cfg))
  visual = sum(np.prod(s.shape) for p, s in shapes.items() if p[0] == "visual")
  total = sum(np.prod(s.shape) for s in shapes.values())
  # OpenAI RN50: 38.3M visual params + BN stats (which torch counts as buffers); 102M total.
  assert 38.0e6 < visual < 38.5e6, visual
  assert 102.0e6 < total < 102.2e6, total
  assert cfg.vision.res4_channels == 1024 and cfg.vision.pool_grid == 7


def test_missing_key_and_wrong_shape_errors(tiny_params):
  sd = clip.state_dict_from_params(tiny_params, TINY)
  bad = dict(sd)
  del bad["visual.layer2.0.conv2.weight"]
  with pytest.raises(
      ValueError, match=r"missing key 'visual\.layer2\.0\.conv2\.weight'.*\(32, 32, 3, 3\)"
  ):
    clip.params_from_state_dict(bad, TINY)
  bad = dict(sd)
  bad["visual.attnpool.c_proj.weight"] = np.zeros((64, 100), np.float32)
  with pytest.raises(
      ValueError,
      match=r"'visual\.attnpool\.c_proj\.weight' has shape \(64, 100\) but the "
      r"config expects \(64, 512\)",
  ):
    clip.params_from_state_dict(bad, TINY)
  bad = dict(sd)
  bad["visual.layer9.0.conv1.weight"] = np.zeros((1,), np.float32)
  with pytest.raises(ValueError, match=r"unexpected key 'visual\.layer9\.0\.conv1\.weight'"):
    clip.params_from_state_dict(bad, TINY)
  with pytest.raises(ValueError, match="lacks 'text_projection'"):
    clip.config_from_state_dict({"foo": np.zeros(3)})
  # Archive metadata and BN counters are not parameters.
  extra = dict(
      sd, input_resolution=np.array(64), context_length=np.array(77), vocab_size=np.array(49408)
  )
  clip.params_from_state_dict(extra, TINY)


def test_bad_images_give_clear_errors(tiny_params):
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\].*got shape \(64, 64, 3\)"):
    _apply(TINY, tiny_params, jnp.zeros((64, 64, 3)), method=clip.CLIP.encode_image)
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\].*got shape \(1, 3, 64, 64\)"):
    _apply(TINY, tiny_params, jnp.zeros((1, 3, 64, 64)), method=clip.CLIP.encode_image)
  with pytest.raises(ValueError, match="float.*uint8"):
    _apply(TINY, tiny_params, jnp.zeros((1, 64, 64, 3), jnp.uint8), method=clip.CLIP.encode_image)
  with pytest.raises(ValueError, match=r"tokens must be int \[B, L\]"):
    _apply(TINY, tiny_params, jnp.zeros((77,), jnp.int32), method=clip.CLIP.encode_text)
  with pytest.raises(ValueError, match="needs a ViT"):
    _apply(TINY, tiny_params, jnp.zeros((1, 64, 64, 3)), method=clip.CLIP.image_tokens)


def test_region_head_on_res4_equals_encode_image_224px():
  params = clip.init_params(NARROW_224, seed=1)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 224, 224, 3)), jnp.float32)
  res4 = _apply(NARROW_224, params, images, method=clip.CLIP.image_res4)
  assert res4.shape == (2, 14, 14, NARROW_224.vision.res4_channels)
  region = _apply(NARROW_224, params, res4, method=clip.CLIP.image_region_head)
  full = _apply(NARROW_224, params, images, method=clip.CLIP.encode_image)
  assert region.shape == (2, 32)
  err = float(jnp.abs(region - full).max())
  print(f"\n[region split] max|head(res4) - encode_image| = {err:.1e}")
  assert err <= 1e-6 * float(jnp.abs(full).max())


def test_region_head_other_grid_interpolates(tiny_params):
  feats = jnp.asarray(
      np.random.default_rng(1).normal(size=(5, 6, 6, TINY.vision.res4_channels)), jnp.float32
  )
  out = _apply(TINY, tiny_params, feats, method=clip.CLIP.image_region_head)
  assert out.shape == (5, TINY.embed_dim) and bool(jnp.isfinite(out).all())
  pos = jnp.asarray(np.random.default_rng(2).normal(size=(49, 8)), jnp.float32)
  assert interpolate_pos_grid(pos, (7, 7)) is pos  # native grid: untouched
  const = jnp.ones((49, 8)) * 3.0
  np.testing.assert_allclose(interpolate_pos_grid(const, (9, 5)), 3.0, rtol=1e-6)


def test_vit_tokens_and_project():
  params = clip.init_params(TINY_VIT, seed=0)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
  cls, grid = _apply(TINY_VIT, params, images, method=clip.CLIP.image_tokens)
  assert cls.shape == (2, 64) and grid.shape == (2, 4, 4, 64)
  proj = _apply(TINY_VIT, params, cls, method=clip.CLIP.image_project)
  full = _apply(TINY_VIT, params, images, method=clip.CLIP.encode_image)
  np.testing.assert_allclose(proj, full, atol=1e-6)
  dense = _apply(TINY_VIT, params, grid, method=clip.CLIP.image_project)
  assert dense.shape == (2, 4, 4, 64)


def test_frozen_bn_regex_and_no_gradient(tiny_params):
  flat = traverse_util.flatten_dict(tiny_params, sep="/")
  matched = {p for p in flat if re.search(clip.FROZEN_BN_REGEX, p)}
  assert matched and all(p.rsplit("/", 1)[1] in ("scale", "bias", "mean", "var") for p in matched)
  # 3 stem BNs + per block bn1-3 (+ downsample_bn on each first block here), 4 arrays each.
  n_blocks = sum(TINY.vision.layers)
  assert len(matched) == 4 * (3 + 3 * n_blocks + 4)
  assert not any(re.search(clip.FROZEN_BN_REGEX, p) for p in flat if p.endswith("kernel"))
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)

  def loss(p):
    out = clip.CLIP(TINY, freeze_at=2).apply({"params": p}, images, method=clip.CLIP.encode_image)
    return jnp.sum(out**2)

  g2 = traverse_util.flatten_dict(jax.jit(jax.grad(loss))(tiny_params), sep="/")
  # BN arrays downstream of the freeze point get no gradient either (stop_gradient inside).
  assert all(float(jnp.abs(g2[p]).max()) == 0.0 for p in matched)
  assert float(jnp.abs(g2["visual/conv1/kernel"]).max()) == 0.0
  assert float(jnp.abs(g2["visual/layer1/0/conv1/kernel"]).max()) == 0.0
  assert float(jnp.abs(g2["visual/layer2/0/conv1/kernel"]).max()) > 0


def test_bf16_compute_keeps_fp32_params(tiny_params):
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
  tokens = jnp.asarray(
      clip.LoadedCLIP(TINY, tiny_params).tokenize(["a red circle", "two blue stars"])
  )
  variables = jax.eval_shape(
      clip.CLIP(TINY, dtype=jnp.bfloat16).init, jax.random.PRNGKey(0), images, tokens
  )
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  for method, x in ((clip.CLIP.encode_image, images), (clip.CLIP.encode_text, tokens)):
    lo = _apply(TINY, tiny_params, x, method=method, dtype=jnp.bfloat16)
    hi = _apply(TINY, tiny_params, x, method=method)
    assert lo.dtype == jnp.bfloat16
    lo, hi = np.asarray(lo, np.float32), np.asarray(hi)
    cos = (lo * hi).sum(-1) / np.linalg.norm(lo, axis=-1) / np.linalg.norm(hi, axis=-1)
    print(f"\n[bf16] {method.__name__} min cosine to fp32 {cos.min():.5f}")
    assert cos.min() > 0.99


def test_loaded_clip_and_forward(tiny_params):
  loaded = clip.LoadedCLIP(TINY, tiny_params)
  toks = loaded.tokenize(["a photo of a star", "a ring"])
  assert toks.shape == (2, 77) and toks.dtype == np.int32
  images = clip.normalize_images(np.zeros((2, 64, 64, 3), np.uint8))
  logits_img, logits_txt = _apply(
      TINY, tiny_params, jnp.asarray(images), jnp.asarray(toks), method=None
  )
  assert logits_img.shape == (2, 2)
  np.testing.assert_allclose(logits_txt, logits_img.T)
  assert float(loaded.logit_scale) == pytest.approx(1 / 0.07, rel=1e-5)
  assert loaded.encode_image(images).shape == (2, 64) and loaded.encode_text(toks).shape == (2, 64)


def test_avg_pool_floors_like_torch():
  from regionclip_jax.models.resnet import _avg_pool

  x = np.random.default_rng(0).normal(size=(2, 9, 11, 3)).astype(np.float32)
  ref = np.zeros((2, 4, 5, 3), np.float32)  # AvgPool2d(2): windows inside the image only
  for i in range(4):
    for j in range(5):
      ref[:, i, j] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(1, 2))
  np.testing.assert_allclose(_avg_pool(jnp.asarray(x), 2), ref, atol=1e-6)


def test_remat_same_gradients():
  cfg = TINY_VIT
  params = clip.init_params(cfg, seed=4)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)

  def grads(remat):
    def loss(p):
      return jnp.sum(
          clip.CLIP(cfg, remat=remat).apply({"params": p}, images, method=clip.CLIP.encode_image)
          ** 2
      )

    return jax.jit(jax.grad(loss))(params)

  for a, b in zip(jax.tree.leaves(grads(False)), jax.tree.leaves(grads(True))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_trim_to_eot_widths():
  from regionclip_jax.models.text import trim_to_eot

  eot = 49407
  t = np.zeros((3, 77), np.int32)
  t[:, 0] = 49406
  t[0, 5], t[1, 11], t[2, 3] = eot, eot, eot
  assert trim_to_eot(t).shape == (3, 16)  # the last EOT at column 11
  t[2, 3], t[2, 40] = 7, eot
  assert trim_to_eot(t).shape == (3, 48)
  t[2, 40], t[2, 76] = 7, eot
  assert trim_to_eot(t).shape == (3, 77)  # never wider than the input
  hf = np.full((2, 77), eot, np.int32)  # HF pads with EOT: the first one counts
  hf[:, 0], hf[:, 1:4] = 49406, 320
  assert trim_to_eot(hf).shape == (2, 16)
  np.testing.assert_array_equal(trim_to_eot(t[:, :12]), t[:, :12])
  t[2, 76], t[2, 15] = 7, eot  # the last column of a width keeps it; one more needs the next
  assert trim_to_eot(t).shape == (3, 16)
  t[2, 15], t[2, 16] = 7, eot
  assert trim_to_eot(t).shape == (3, 32)
  assert trim_to_eot(t[:0]).shape == (0, 77)


def test_loaded_encode_text_cut_columns_change_nothing(tiny_params):
  """LoadedCLIP.encode_text cuts the columns after the last EOT; the full 77-column forward
  (the module's own method on untouched tokens) gives the same embeddings up to rounding."""
  loaded = clip.LoadedCLIP(TINY, tiny_params)
  texts = ["a photo of a star", "a ring", " ".join(["a big red circle"] * 9)]  # ~38 tokens
  toks = loaded.tokenize(texts)
  assert int(toks.argmax(1).max()) > 16
  from regionclip_jax.models.text import trim_to_eot

  assert trim_to_eot(toks).shape[1] == 48 and trim_to_eot(toks[:2]).shape[1] == 16
  full = _apply(TINY, tiny_params, jnp.asarray(toks), method=clip.CLIP.encode_text)
  cut = loaded.encode_text(toks)
  np.testing.assert_allclose(np.asarray(cut), np.asarray(full), rtol=0, atol=1e-5)
  # the same rows without the long one: a 16-column program, the same two embeddings
  np.testing.assert_allclose(
      np.asarray(loaded.encode_text(toks[:2])), np.asarray(full[:2]), rtol=0, atol=1e-5
  )
  # traced tokens (the encoder inside a caller's jit) pass through uncut
  traced = jax.jit(loaded.encode_text)(jnp.asarray(toks))
  np.testing.assert_allclose(np.asarray(traced), np.asarray(full), rtol=0, atol=1e-5)
