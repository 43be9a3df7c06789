"""Checkpoint import: each public format, written by its reference code (or by the official key
layout), read into our CLIP and compared with the PyTorch reference forward.

Errors are printed (`pytest -s` shows them).
"""

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import test_checkpoints_util as u
from regionclip_jax.models import checkpoints as ck


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _parity(loaded, ref_img, ref_txt, images, tokens, name, tol=1e-4):
  img = np.asarray(loaded.encode_image(images))
  txt = np.asarray(loaded.encode_text(tokens.astype(np.int32)))
  e_img = np.abs(_unit(img) - _unit(ref_img)).max()
  e_txt = np.abs(_unit(txt) - _unit(ref_txt)).max()
  e_raw = max(
      np.abs(img - ref_img).max() / np.abs(ref_img).max(),
      np.abs(txt - ref_txt).max() / np.abs(ref_txt).max(),
  )
  print(
      f"\n{name}: max|unit diff| image {e_img:.2e} text {e_txt:.2e}; max rel raw diff {e_raw:.2e}"
  )
  assert e_img < tol and e_txt < tol and e_raw < tol
  return e_img, e_txt


def _same_state_dict(sd, ref):
  ref = {k: v for k, v in ref.items() if not k.endswith("num_batches_tracked")}
  assert sorted(sd) == sorted(ref)
  for k in ref:
    np.testing.assert_array_equal(sd[k], ref[k].reshape(sd[k].shape), err_msg=k)


@pytest.fixture(scope="module")
def rn_model():
  return u.torch_clip("rn", seed=0)


@pytest.fixture(scope="module")
def vit_model():
  return u.torch_clip("vit", seed=1)


@pytest.fixture(scope="module")
def rn_inputs(rn_model):
  images, tokens = u.random_images(2, 64, seed=3), u.random_tokens(3, seed=4)
  return images, tokens, *u.torch_embeddings(rn_model, images, tokens)


def test_openai_torchscript_archive(tmp_path, rn_model, rn_inputs):
  path = u.save_openai_torchscript(rn_model, str(tmp_path / "RN-tiny.pt"))
  assert ck.detect_source(path) == "openai"
  sd, source = ck.read_state_dict(path)
  assert source == "openai"
  _same_state_dict(sd, u.numpy_sd(rn_model))  # the archive's int entries are dropped
  loaded = ck.load(path, arch="resnet")
  assert loaded.config.vision.layers == (1, 1, 1, 1) and loaded.config.embed_dim == 64
  _parity(loaded, *rn_inputs[2:], *rn_inputs[:2], "openai torchscript RN")


def test_openai_plain_state_dict_vit(tmp_path, vit_model):
  path = u.save_openai_state_dict(vit_model, str(tmp_path / "vit.pt"))
  assert ck.detect_source(path) == "openai"
  loaded = ck.load(path, arch="vit")
  images, tokens = u.random_images(2, 32, seed=5), u.random_tokens(3, seed=6)
  _parity(
      loaded,
      *u.torch_embeddings(vit_model, images, tokens),
      images,
      tokens,
      "openai state dict ViT",
  )


def test_hf_clip_directory_parity_with_transformers(tmp_path):
  """HF pads with EOT (49407): the HF side gets HF-padded ids, ours OpenAI's (pad 0) and
  HF's own ids, which must give the same embeddings (EOT pooling, not pad pooling)."""
  folder = str(tmp_path / "hf")
  model = u.save_hf(folder)
  assert ck.detect_source(folder) == "hf"
  images = u.random_images(3, 32, seed=7)
  ours_tokens, hf_tokens = u.random_tokens(4, seed=8, pad=0), u.random_tokens(4, seed=8, pad=u.EOT)
  with torch.no_grad():
    ref_img = model.get_image_features(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2))
    ref_txt = model.get_text_features(input_ids=torch.from_numpy(hf_tokens))
  ref_img = getattr(ref_img, "pooler_output", ref_img).numpy()
  ref_txt = getattr(ref_txt, "pooler_output", ref_txt).numpy()
  loaded = ck.load(folder, arch="vit")
  # heads come from config.json (4 heads of width 8, not OpenAI's width // 64 rule)
  assert loaded.config.vision.heads == 4 and loaded.config.text.heads == 4
  _parity(loaded, ref_img, ref_txt, images, ours_tokens, "HF CLIPModel ViT (OpenAI pad 0)")
  _parity(loaded, ref_img, ref_txt, images, hf_tokens, "HF CLIPModel ViT (HF pad 49407)")
  # a lone model.safetensors file (config.json beside it) reads the same
  sd_dir, _ = ck.read_state_dict(folder)
  sd_file, source = ck.read_state_dict(os.path.join(folder, "model.safetensors"))
  assert source == "hf" and sorted(sd_dir) == sorted(sd_file)
  # the older pytorch_model.bin layout, read with weights_only=True
  legacy = tmp_path / "hf_bin"
  legacy.mkdir()
  torch.save(model.state_dict(), legacy / "pytorch_model.bin")
  with open(os.path.join(folder, "config.json")) as f:
    (legacy / "config.json").write_text(f.read())
  sd_bin, source = ck.read_state_dict(str(legacy))
  assert source == "hf" and sorted(sd_bin) == sorted(sd_dir)
  for k in sd_dir:
    np.testing.assert_array_equal(sd_bin[k], sd_dir[k], err_msg=k)


def test_open_clip_hub_files_and_training_checkpoint(tmp_path, rn_model, rn_inputs):
  ref = u.numpy_sd(rn_model)
  hub = u.save_open_clip_hub(rn_model, str(tmp_path / "hub"))
  assert ck.detect_source(hub) == "open_clip"
  sd, source = ck.read_state_dict(hub)  # safetensors preferred
  assert source == "open_clip"
  _same_state_dict(sd, ref)
  sd_bin, source = ck.read_state_dict(os.path.join(hub, "open_clip_pytorch_model.bin"))
  assert source == "open_clip"
  _same_state_dict(sd_bin, ref)
  train = u.save_open_clip_training(rn_model, str(tmp_path / "epoch_3.pt"))
  sd_train, source = ck.read_state_dict(train)
  assert source == "open_clip"
  _same_state_dict(sd_train, ref)
  custom = u.save_open_clip_hub(rn_model, str(tmp_path / "custom"), custom_text=True)
  _same_state_dict(ck.read_state_dict(custom)[0], ref)
  _parity(ck.load(hub), *rn_inputs[2:], *rn_inputs[:2], "open_clip hub RN")


def test_open_clip_gelu_model_is_refused(tmp_path, rn_model):
  hub = u.save_open_clip_hub(rn_model, str(tmp_path / "gelu"), quick_gelu=False)
  with pytest.raises(ck.CheckpointError, match="activation 'gelu'"):
    ck.load(hub)


def test_regionclip_pretraining_checkpoint_student_and_teacher(tmp_path, rn_model, rn_inputs):
  teacher = u.torch_clip("rn", seed=11)
  path = str(tmp_path / "regionclip_pretrained-tiny.pth")
  torch.save(u.regionclip_checkpoint(rn_model, teacher), path)
  assert ck.detect_source(path) == "regionclip"
  sd, _ = ck.read_state_dict(path)
  ref = u.numpy_sd(rn_model)
  for k in ref:
    if k != "logit_scale" and not k.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(sd[k], ref[k], err_msg=k)
  assert not any(k.startswith(("offline_", "roi_heads", "teacher")) for k in sd)
  np.testing.assert_allclose(sd["logit_scale"], np.log(100.0), rtol=1e-6)  # fixed tau = 0.01
  _parity(ck.load(path), *rn_inputs[2:], *rn_inputs[:2], "RegionCLIP student")
  t_sd, _ = ck.read_state_dict(path, part="teacher")
  np.testing.assert_array_equal(
      t_sd["visual.conv1.weight"], u.numpy_sd(teacher)["visual.conv1.weight"]
  )
  np.testing.assert_array_equal(t_sd["token_embedding.weight"], ref["token_embedding.weight"])


def test_regionclip_detector_needs_a_text_tower(tmp_path, rn_model):
  det = str(tmp_path / "model_final.pth")
  torch.save(u.regionclip_checkpoint(rn_model, with_text=False), det)
  with pytest.raises(ck.CheckpointError, match=r"no text tower \(lang_encoder"):
    ck.read_state_dict(det)
  text_src = u.save_openai_state_dict(u.torch_clip("rn", seed=5), str(tmp_path / "clip.pt"))
  sd, source = ck.read_state_dict(det, text_from=text_src)
  assert source == "regionclip"
  np.testing.assert_array_equal(
      sd["visual.conv1.weight"], u.numpy_sd(rn_model)["visual.conv1.weight"]
  )
  np.testing.assert_array_equal(
      sd["token_embedding.weight"], u.numpy_sd(u.torch_clip("rn", seed=5))["token_embedding.weight"]
  )


def test_safetensors_reader_handles_bf16_and_fp16(tmp_path):
  import safetensors.torch

  a = torch.randn(3, 5)
  path = str(tmp_path / "x.safetensors")
  safetensors.torch.save_file(
      {"a": a.to(torch.bfloat16), "b": a.half(), "c": torch.arange(4)}, path
  )
  out = ck.read_safetensors(path)
  np.testing.assert_array_equal(out["a"], a.to(torch.bfloat16).float().numpy())
  np.testing.assert_array_equal(out["b"], a.half().numpy())
  np.testing.assert_array_equal(out["c"], np.arange(4))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["RN50", "ViT-B/32"])
def test_full_size_openai_archive(tmp_path, name):
  """Full-size architectures (random weights) through a TorchScript archive, as OpenAI ships them."""
  m = u.openai_model_py()
  torch.manual_seed(0)
  if name == "RN50":
    args = dict(
        embed_dim=1024,
        image_resolution=224,
        vision_layers=(3, 4, 6, 3),
        vision_width=64,
        vision_patch_size=None,
    )
  else:
    args = dict(
        embed_dim=512,
        image_resolution=224,
        vision_layers=12,
        vision_width=768,
        vision_patch_size=32,
    )
  model = m.CLIP(
      **args,
      context_length=77,
      vocab_size=49408,
      transformer_width=512,
      transformer_heads=8,
      transformer_layers=12,
  ).eval()
  path = u.save_openai_torchscript(model, str(tmp_path / "full.pt"))
  loaded = ck.load(path)
  from regionclip_jax.models import clip

  assert loaded.config == clip.PRESETS[name]
  images, tokens = u.random_images(1, 224, seed=0), u.random_tokens(2, seed=0)
  _parity(loaded, *u.torch_embeddings(model, images, tokens), images, tokens, f"full-size {name}")


def test_torchscript_reader_matches_torch_jit_load(tmp_path, vit_model):
  """Our torch-free archive reader against torch's own loader, on the same archive."""
  path = u.save_openai_torchscript(vit_model, str(tmp_path / "ViT.pt"))
  ours = ck.read_torchscript_archive(path)
  ref = {
      k: v.detach().numpy()
      for k, v in torch.jit.load(path, map_location="cpu").state_dict().items()
  }
  assert set(ref) <= set(ours)
  for k in ref:
    np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)
  assert set(ours) - set(ref) <= {
      "transformer.resblocks.0.attn_mask",
      "transformer.resblocks.1.attn_mask",
  }


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_]),
            st.lists(st.integers(0, 4), min_size=0, max_size=3),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_safetensors_reader_round_trips_any_layout(tmp_path_factory, specs):
  """Against the safetensors library's own writer: every dtype / shape (0-d and empty too)."""
  import safetensors.numpy

  rng = np.random.default_rng(len(specs))
  arrays = {
      f"t{i}": np.asarray(rng.normal(size=shape) * 10).astype(dt)
      for i, (dt, shape) in enumerate(specs)
  }
  path = str(tmp_path_factory.mktemp("st") / "x.safetensors")
  safetensors.numpy.save_file(arrays, path)
  out = ck.read_safetensors(path)
  assert sorted(out) == sorted(arrays)
  for k, v in arrays.items():
    assert out[k].dtype == v.dtype and out[k].shape == v.shape
    np.testing.assert_array_equal(out[k], v)
