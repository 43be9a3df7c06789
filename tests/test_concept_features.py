"""tools/extract_concept_features: parity with OpenAI's text tower (clip-anytorch model.py on the
same random weights), prompts built independently here from the official rules."""

import importlib.util
import os

import numpy as np
import torch

import test_checkpoints_util as u
from regionclip_jax.tools import extract_concept_features as ecf

# The official 81 templates as RegionCLIP's clip_prompt_utils lists them: "{}." + CLIP's 80.
_SOME_OFFICIAL = [
    "{}.",
    "a photo of a {}.",
    "a bad photo of a {}.",
    "itap of my {}.",
    "a tattoo of the {}.",
]


def _reference_tokenizer():
  spec = importlib.util.find_spec("clip")
  path = os.path.join(list(spec.submodule_search_locations)[0], "simple_tokenizer.py")
  mspec = importlib.util.spec_from_file_location("_openai_simple_tokenizer", path)
  mod = importlib.util.module_from_spec(mspec)
  mspec.loader.exec_module(mod)
  return mod.SimpleTokenizer()


def _reference_embeddings(model, names, templates):
  tok = _reference_tokenizer()
  sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
  out = []
  for raw in names:
    name = raw.replace("_", " ").replace("(", "").replace(")", "")
    texts = [t.replace("{}", name.replace(",", "").replace("+", " ")) for t in templates]
    ids = np.zeros((len(texts), 77), np.int64)
    for i, s in enumerate(texts):
      seq = [sot] + tok.encode(s) + [eot]
      ids[i, : len(seq)] = seq
    with torch.no_grad():
      emb = model.encode_text(torch.from_numpy(ids)).double().numpy()
    out.append(emb.mean(0))
  return np.stack(out)


def test_extract_concept_features_matches_reference_text_tower(tmp_path, capsys):
  from regionclip_jax.models.prompts import TEMPLATES

  assert all(t in TEMPLATES for t in _SOME_OFFICIAL) and len(TEMPLATES) == 81
  model = u.torch_clip("rn", seed=7)
  ckpt = u.save_openai_state_dict(model, str(tmp_path / "clip.pt"))
  concepts = tmp_path / "concepts.txt"
  concepts.write_text("traffic_light,130\nbow_(weapon),12\nsalt+pepper shaker\n")
  out = str(tmp_path / "feats" / "concepts.npy")
  assert (
      ecf.main(
          [f"--checkpoint={ckpt}", f"--concepts={concepts}", f"--output={out}", "--batch_size=128"]
      )
      == 0
  )
  got = np.load(out)
  assert got.shape == (3, 64) and got.dtype == np.float32
  ref = _reference_embeddings(
      model, ["traffic_light", "bow_(weapon)", "salt+pepper shaker"], TEMPLATES
  )
  err = np.abs(got - ref).max()
  unit = np.abs(
      got / np.linalg.norm(got, axis=-1, keepdims=True)
      - ref / np.linalg.norm(ref, axis=-1, keepdims=True)
  ).max()
  assert "wrote" in capsys.readouterr().out
  print(
      f"\nconcept features vs reference: max abs {err:.2e}, max unit-vector diff {unit:.2e}, "
      f"norms {np.linalg.norm(got, axis=-1).round(3)}"
  )
  assert err < 1e-4 * max(1.0, np.abs(ref).max()) and unit < 1e-5


def test_extract_concept_features_bad_input(tmp_path, capsys):
  assert (
      ecf.main(
          [
              f"--checkpoint={tmp_path / 'none.pt'}",
              f"--concepts={tmp_path / 'c.txt'}",
              f"--output={tmp_path / 'o.npy'}",
          ]
      )
      == 2
  )
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "c.txt" in err
