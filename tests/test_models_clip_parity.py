"""Numerical parity of the Flax CLIP towers with OpenAI's `model.py` (clip-anytorch wheel).

Every comparison goes through `params_from_state_dict(torch_model.state_dict())`, so the
OpenAI -> Flax conversion is tested with it. Errors are printed (see them with `pytest -s`).
"""

import importlib.util
import os

import jax
import numpy as np
import pytest

from regionclip_jax.models import clip

torch = pytest.importorskip("torch")


def _openai_model_py():
  spec = importlib.util.find_spec("clip")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("clip-anytorch is not installed (pip install --no-deps clip-anytorch)")
  path = os.path.join(next(iter(spec.submodule_search_locations)), "model.py")
  # Imported by path: the package __init__ pulls torchvision, which does not import here.
  mspec = importlib.util.spec_from_file_location("_openai_clip_model", path)
  mod = importlib.util.module_from_spec(mspec)
  mspec.loader.exec_module(mod)
  return mod


def _torch_clip(cfg: clip.CLIPConfig, seed=0):
  """OpenAI CLIP in fp32 with every BN given non-trivial stats (the stock init zeros bn3)."""
  m = _openai_model_py()
  torch.manual_seed(seed)
  v, t = cfg.vision, cfg.text
  if cfg.is_resnet:
    model = m.CLIP(
        cfg.embed_dim,
        v.image_size,
        tuple(v.layers),
        v.width,
        None,
        t.context_length,
        t.vocab_size,
        t.width,
        t.heads,
        t.layers,
    )
  else:
    model = m.CLIP(
        cfg.embed_dim,
        v.image_size,
        v.layers,
        v.width,
        v.patch_size,
        t.context_length,
        t.vocab_size,
        t.width,
        t.heads,
        t.layers,
    )
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        mod.weight.uniform_(0.5, 1.5)
        mod.bias.normal_(0, 0.1)
        mod.running_mean.normal_(0, 0.1)
        mod.running_var.uniform_(0.5, 1.5)
      if isinstance(mod, torch.nn.LayerNorm):
        mod.weight.uniform_(0.5, 1.5)
        mod.bias.normal_(0, 0.1)
  return model.eval()


def _state_dict(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _tokens(batch, vocab=49408, seed=0, length=77):
  rng = np.random.default_rng(seed)
  toks = np.zeros((batch, length), np.int64)
  for i in range(batch):
    n = int(rng.integers(1, length - 2))
    toks[i, 0] = 49406
    toks[i, 1 : n + 1] = rng.integers(1, 49406, n)
    toks[i, n + 1] = 49407
  toks[-1, :] = np.r_[49406, rng.integers(1, 49406, length - 2), 49407]  # a full-length row
  return toks


def _images(batch, size, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def _compare(cfg, batch=3, seed=0, text=True):
  tmodel = _torch_clip(cfg, seed)
  sd = _state_dict(tmodel)
  assert clip.config_from_state_dict(sd) == cfg
  params = clip.params_from_state_dict(sd, cfg)
  loaded = clip.LoadedCLIP(cfg, params)
  images = _images(batch, cfg.image_size, seed)
  with torch.no_grad():
    ref_img = tmodel.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  img_err = np.abs(_unit(loaded.encode_image(images)) - _unit(ref_img)).max()
  txt_err = None
  if text:
    toks = _tokens(batch, seed=seed)
    with torch.no_grad():
      ref_txt = tmodel.encode_text(torch.from_numpy(toks)).numpy()
    txt_err = np.abs(_unit(loaded.encode_text(toks.astype(np.int32))) - _unit(ref_txt)).max()
  return img_err, txt_err, tmodel, loaded


TINY_RN = clip.CLIPConfig(
    32, clip.ResNetConfig((1, 2, 1, 1), 16, 8, 64), clip.TextConfig(width=64, heads=1, layers=2)
)
TINY_VIT = clip.CLIPConfig(
    32, clip.ViTConfig(64, 16, 128, 2, 2), clip.TextConfig(width=128, heads=2, layers=2)
)


def test_resnet_and_text_parity_tiny():
  img_err, txt_err, _, _ = _compare(TINY_RN)
  print(f"\n[parity tiny RN] image max|diff| {img_err:.2e}  text max|diff| {txt_err:.2e}")
  assert img_err < 1e-4 and txt_err < 1e-4


def test_vit_parity_tiny():
  img_err, txt_err, _, _ = _compare(TINY_VIT)
  print(f"\n[parity tiny ViT] image max|diff| {img_err:.2e}  text max|diff| {txt_err:.2e}")
  assert img_err < 1e-4 and txt_err < 1e-4


def test_state_dict_round_trip_loads_into_openai_model():
  cfg = clip.PRESETS["tiny_rn"]
  params = clip.init_params(cfg, seed=3)
  sd = clip.state_dict_from_params(params, cfg)
  # Our params -> OpenAI state dict -> torch model (strict) -> same embeddings.
  tmodel = _torch_clip(cfg, seed=1)
  tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  images = _images(2, cfg.image_size, seed=5)
  with torch.no_grad():
    ref = tmodel.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  ours = clip.LoadedCLIP(cfg, params).encode_image(images)
  err = np.abs(_unit(ours) - _unit(ref)).max()
  print(f"\n[round trip via torch] image max|diff| {err:.2e}")
  assert err < 1e-4
  back = clip.params_from_state_dict(sd, cfg)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pad_id_does_not_change_text_embedding():
  cfg = clip.PRESETS["tiny_rn"]
  loaded = clip.LoadedCLIP(cfg, clip.init_params(cfg, seed=1))
  toks = _tokens(3, seed=2)[:2].astype(np.int32)
  hf = toks.copy()
  for row in hf:  # HF pads with the EOT id
    eot = int(np.argmax(row))
    row[eot + 1 :] = 49407
  a, b = np.asarray(loaded.encode_text(toks)), np.asarray(loaded.encode_text(hf))
  np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_rn50_full_size_parity():
  cfg = clip.PRESETS["RN50"]
  img_err, txt_err, _, _ = _compare(cfg, batch=2)
  print(f"\n[parity RN50] image max|diff| {img_err:.2e}  text max|diff| {txt_err:.2e}")
  assert img_err < 1e-4 and txt_err < 1e-4


@pytest.mark.slow
def test_vit_b32_full_size_parity():
  cfg = clip.PRESETS["ViT-B/32"]
  img_err, _, _, _ = _compare(cfg, batch=2, text=False)
  print(f"\n[parity ViT-B/32] image max|diff| {img_err:.2e}")
  assert img_err < 1e-4


@pytest.mark.parametrize("fold_kv", [True, False])
@pytest.mark.parametrize("grid", [3, 7])
def test_attention_pool_forward_and_gradients_match_openai(grid, fold_kv):
  """`resnet.AttentionPool2d(fold_kv=True)` folds keys and values into the one query; OpenAI's
  AttentionPool2d projects every token. Outputs and every gradient (input, projections,
  positional embedding) must agree; the key bias gets none in either (it shifts all logits of a
  head alike)."""
  from regionclip_jax.models import resnet

  m = _openai_model_py()
  c, heads, out_dim = 64, 4, 32
  torch.manual_seed(0)
  ref = m.AttentionPool2d(grid, c, heads, out_dim)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, grid, grid, c)).astype(np.float32)
  cot = rng.normal(size=(5, out_dim)).astype(np.float32)
  xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  (ref(xt) * torch.from_numpy(cot)).sum().backward()
  y_ref = ref(xt).detach().numpy()

  def lin(name):
    mod = getattr(ref, name)
    return {"kernel": mod.weight.detach().numpy().T, "bias": mod.bias.detach().numpy()}

  params = {n: lin(n) for n in ("q_proj", "k_proj", "v_proj", "c_proj")}
  params["positional_embedding"] = ref.positional_embedding.detach().numpy()
  pool = resnet.AttentionPool2d(grid, heads, out_dim, fold_kv=fold_kv)
  y, vjp = jax.vjp(lambda p, a: pool.apply({"params": p}, a), params, x)
  g_params, g_x = vjp(cot)
  np.testing.assert_allclose(np.asarray(y), y_ref, rtol=0, atol=2e-5)
  np.testing.assert_allclose(
      np.asarray(g_x), xt.grad.numpy().transpose(0, 2, 3, 1), rtol=0, atol=2e-5
  )
  for name in ("q_proj", "k_proj", "v_proj", "c_proj"):
    mod = getattr(ref, name)
    np.testing.assert_allclose(
        np.asarray(g_params[name]["kernel"]), mod.weight.grad.numpy().T, rtol=0, atol=2e-5
    )
    np.testing.assert_allclose(
        np.asarray(g_params[name]["bias"]), mod.bias.grad.numpy(), rtol=0, atol=2e-5
    )
  np.testing.assert_allclose(
      np.asarray(g_params["positional_embedding"]),
      ref.positional_embedding.grad.numpy(),
      rtol=0,
      atol=2e-5,
  )
