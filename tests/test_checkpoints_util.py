"""Fixtures for the checkpoint tests: tiny random CLIPs saved in each public format by their own
reference code (OpenAI's `model.py` from clip-anytorch, transformers' `CLIPModel`), and files laid
out as open_clip and RegionCLIP (detectron2) write them.

Imported by the test modules; holds no tests itself (the one below checks the fixtures).
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings

import numpy as np
import torch

EOT, SOT = 49407, 49406
# Tiny towers. Text width 64 keeps OpenAI's heads = width // 64 rule at 1 head; vocab stays at
# 49408 so that real token ids (SOT/EOT) are valid.
RN = dict(
    embed_dim=64,
    image_resolution=64,
    vision_layers=(1, 1, 1, 1),
    vision_width=16,
    vision_patch_size=None,
    context_length=77,
    vocab_size=49408,
    transformer_width=64,
    transformer_heads=1,
    transformer_layers=2,
)
VIT = dict(
    embed_dim=64,
    image_resolution=32,
    vision_layers=2,
    vision_width=64,
    vision_patch_size=8,
    context_length=77,
    vocab_size=49408,
    transformer_width=64,
    transformer_heads=1,
    transformer_layers=2,
)


def openai_model_py():
  """OpenAI's `clip/model.py` from the clip-anytorch wheel, imported by path (its package
  __init__ needs torchvision, which does not import beside torch 2.13 CPU)."""
  spec = importlib.util.find_spec("clip")
  path = os.path.join(list(spec.submodule_search_locations)[0], "model.py")
  mspec = importlib.util.spec_from_file_location("_openai_clip_model_ckpt", path)
  mod = importlib.util.module_from_spec(mspec)
  mspec.loader.exec_module(mod)
  return mod


def torch_clip(kind: str = "rn", seed: int = 0):
  """Random fp32 OpenAI CLIP, every norm layer given non-trivial statistics."""
  m = openai_model_py()
  torch.manual_seed(seed)
  model = m.CLIP(**(RN if kind == "rn" else VIT))
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
        mod.weight.uniform_(0.5, 1.5)
        mod.bias.normal_(0, 0.1)
      if isinstance(mod, torch.nn.BatchNorm2d):
        mod.running_mean.normal_(0, 0.1)
        mod.running_var.uniform_(0.5, 1.5)
    model.logit_scale.fill_(3.0)
  return model.eval()


def numpy_sd(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def random_tokens(n: int, seed: int = 0, pad: int = 0, context: int = 77) -> np.ndarray:
  """[n, context] int64 OpenAI-style sequences (SOT, ids, EOT, pad...) of varied lengths."""
  rng = np.random.default_rng(seed)
  out = np.full((n, context), pad, np.int64)
  for i in range(n):
    length = int(rng.integers(1, 12))
    out[i, 0] = SOT
    out[i, 1 : length + 1] = rng.integers(1, 49000, length)
    out[i, length + 1] = EOT
  return out


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def torch_embeddings(model, images: np.ndarray, tokens: np.ndarray):
  with torch.no_grad():
    img = model.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    txt = model.encode_text(torch.from_numpy(tokens)).numpy()
  return img, txt


# --------------------------------------------------------------------------------------------
# writers, one per format
# --------------------------------------------------------------------------------------------
def save_openai_torchscript(model, path: str, res: int | None = None) -> str:
  """TorchScript archive like OpenAI's released `.pt` (traced, with its three int entries).

  `res`: input resolution (default: the model's own)."""
  res = res or model.visual.input_resolution
  saved = {}
  for name, value in (("input_resolution", res), ("context_length", 77), ("vocab_size", 49408)):
    if name in model.__dict__:  # plain int attributes of model.py, unused by forward
      saved[name] = model.__dict__.pop(name)
    model.register_buffer(name, torch.tensor(value))
  images = torch.zeros(1, 3, res, res)
  tokens = torch.from_numpy(random_tokens(1))
  with warnings.catch_warnings():  # tracing model.py warns about shape checks; harmless here
    warnings.simplefilter("ignore")
    traced = torch.jit.trace(model, (images, tokens), check_trace=False)
  traced.save(path)
  for name in ("input_resolution", "context_length", "vocab_size"):
    delattr(model, name)
  model.__dict__.update(saved)
  return path


def save_openai_state_dict(model, path: str) -> str:
  torch.save(model.state_dict(), path)
  return path


def save_hf(folder: str, seed: int = 0, eot_pooling_id: int = EOT):
  """transformers' PyTorch CLIPModel (tiny ViT config) written with `save_pretrained`."""
  import transformers

  torch.manual_seed(seed)
  cfg = transformers.CLIPConfig(
      text_config=dict(
          vocab_size=49408,
          hidden_size=32,
          intermediate_size=128,
          num_hidden_layers=2,
          num_attention_heads=4,
          max_position_embeddings=77,
          eos_token_id=eot_pooling_id,
          pad_token_id=1,
          bos_token_id=SOT,
      ),
      vision_config=dict(
          hidden_size=48,
          intermediate_size=192,
          num_hidden_layers=2,
          num_attention_heads=4,
          image_size=32,
          patch_size=8,
      ),
      projection_dim=24,
  )
  model = transformers.CLIPModel(cfg).eval()
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, torch.nn.LayerNorm):
        mod.weight.uniform_(0.5, 1.5)
        mod.bias.normal_(0, 0.1)
  model.save_pretrained(folder)
  return model


def open_clip_model_cfg(kind: str = "rn", quick_gelu: bool = True) -> dict:
  cfg = RN if kind == "rn" else VIT
  vision = {
      "image_size": cfg["image_resolution"],
      "layers": cfg["vision_layers"],
      "width": cfg["vision_width"],
      "patch_size": cfg["vision_patch_size"],
  }
  if kind == "rn":
    vision["layers"] = list(cfg["vision_layers"])
  else:
    vision["head_width"] = 64
  return {
      "embed_dim": cfg["embed_dim"],
      "quick_gelu": quick_gelu,
      "vision_cfg": vision,
      "text_cfg": {
          "context_length": 77,
          "vocab_size": 49408,
          "width": cfg["transformer_width"],
          "heads": cfg["transformer_heads"],
          "layers": cfg["transformer_layers"],
      },
  }


def save_open_clip_hub(
    model, folder: str, kind: str = "rn", quick_gelu: bool = True, custom_text: bool = False
):
  """What open_clip's `push_to_hf_hub.save_for_hf` writes: the model's state dict as
  `open_clip_model.safetensors` and `open_clip_pytorch_model.bin`, plus `open_clip_config.json`
  ({"model_cfg", "preprocess_cfg"}). `custom_text` moves the text tower under `text.` as
  open_clip's CustomTextCLIP does."""
  import safetensors.torch

  os.makedirs(folder, exist_ok=True)
  sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
  if custom_text:
    text_keys = (
        "text_projection",
        "positional_embedding",
        "token_embedding",
        "transformer",
        "ln_final",
    )
    sd = {("text." + k if k.startswith(text_keys) else k): v for k, v in sd.items()}
  # open_clip's CLIP keeps the causal mask as a non-persistent buffer: absent from the files.
  safetensors.torch.save_file(sd, os.path.join(folder, "open_clip_model.safetensors"))
  torch.save(sd, os.path.join(folder, "open_clip_pytorch_model.bin"))
  with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
    json.dump(
        {
            "model_cfg": open_clip_model_cfg(kind, quick_gelu),
            "preprocess_cfg": {
                "mean": [0.48145466, 0.4578275, 0.40821073],
                "std": [0.26862954, 0.26130258, 0.27577711],
            },
        },
        f,
    )
  return folder


def save_open_clip_training(model, path: str) -> str:
  """An open_clip training checkpoint (`epoch_N.pt`): DDP `module.` keys under "state_dict"."""
  sd = {"module." + k: v for k, v in model.state_dict().items()}
  torch.save(
      {
          "epoch": 3,
          "name": "tiny",
          "state_dict": sd,
          "optimizer": {"state": {}, "param_groups": []},
      },
      path,
  )
  return path


def regionclip_checkpoint(
    student, teacher=None, with_text: bool = True, extras: bool = True
) -> dict:
  """A RegionCLIP detectron2 checkpoint dict, keys named as the official modules name them:
  student ModifiedResNet under `backbone.`, teacher under `teacher_backbone.`, CLIPLangEncoder
  under `lang_encoder.` (no logit_scale), FrozenBatchNorm2d without `num_batches_tracked`,
  plus the detector's own modules (offline RPN, RoI predictor) that are not CLIP."""
  model = {}

  def visual(prefix, m):
    for k, v in m.visual.state_dict().items():
      if not k.endswith("num_batches_tracked"):
        model[prefix + k] = v.detach().clone()

  visual("backbone.", student)
  if teacher is not None:
    visual("teacher_backbone.", teacher)
  if with_text:
    for k, v in student.state_dict().items():
      if not k.startswith("visual.") and k != "logit_scale":
        model["lang_encoder." + k] = v.detach().clone()
  if extras:
    model["offline_backbone.bottom_up.stem.conv1.weight"] = torch.randn(8, 3, 7, 7)
    model["offline_backbone.bottom_up.stem.conv1.norm.weight"] = torch.ones(8)
    model["offline_proposal_generator.rpn_head.conv.weight"] = torch.randn(8, 8, 3, 3)
    model["roi_heads.box_predictor.bbox_pred.weight"] = torch.randn(4, 64)
    model["roi_heads.box_predictor.bbox_pred.bias"] = torch.zeros(4)
  return {"model": model, "iteration": 1234}


def test_fixtures_are_distinct_models():
  a, b = numpy_sd(torch_clip("rn", 0)), numpy_sd(torch_clip("rn", 1))
  assert not np.allclose(a["visual.conv1.weight"], b["visual.conv1.weight"])
  toks = random_tokens(3)
  assert (toks.argmax(-1) == (toks == EOT).argmax(-1)).all()
