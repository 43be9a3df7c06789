"""tools/convert: any format -> our directory, read back without PyTorch, same numbers."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

import test_checkpoints_util as u
from regionclip_jax.models import checkpoints as ck
from regionclip_jax.models import clip
from regionclip_jax.tools import convert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flat(tree):
  return ck._flatten_params(tree)


def test_convert_openai_archive_and_load_without_torch(tmp_path):
  model = u.torch_clip("rn", seed=2)
  src = u.save_openai_torchscript(model, str(tmp_path / "RN.pt"))
  out = str(tmp_path / "converted")
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  run = subprocess.run(
      [sys.executable, "-m", "regionclip_jax.tools.convert", f"--input={src}", f"--output={out}"],
      env=env,
      capture_output=True,
      text=True,
      check=False,
  )
  assert run.returncode == 0, run.stderr
  assert "wrote" in run.stdout
  assert sorted(os.listdir(out)) == ["config.json", "params.safetensors"]
  assert ck.detect_source(out) == "converted"
  direct = ck.load(src)
  back = clip.load(out)
  assert back.config == direct.config
  a, b = _flat(direct.params), _flat(back.params)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)

  images, tokens = u.random_images(2, 64, seed=1), u.random_tokens(2, seed=2)
  ref_img, ref_txt = u.torch_embeddings(model, images, tokens)
  np.save(tmp_path / "images.npy", images)
  np.save(tmp_path / "tokens.npy", tokens.astype(np.int32))
  # A fresh interpreter where `import torch` fails reads the directory and computes embeddings.
  script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        import numpy as np
        from regionclip_jax.models import clip
        m = clip.load({out!r})
        images = np.load({str(tmp_path / "images.npy")!r})
        tokens = np.load({str(tmp_path / "tokens.npy")!r})
        np.save({str(tmp_path / "img.npy")!r}, np.asarray(m.encode_image(images)))
        np.save({str(tmp_path / "txt.npy")!r}, np.asarray(m.encode_text(tokens)))
        assert "torch" not in sys.modules or sys.modules["torch"] is None
    """)
  subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=str(tmp_path))
  err_img = np.abs(np.load(tmp_path / "img.npy") - ref_img).max()
  err_txt = np.abs(np.load(tmp_path / "txt.npy") - ref_txt).max()
  print(f"\nconverted dir, no torch: max abs diff image {err_img:.2e} text {err_txt:.2e}")
  assert err_img < 1e-4 and err_txt < 1e-4


def test_convert_cli_regionclip_teacher_and_errors(tmp_path, capsys):
  student, teacher = u.torch_clip("rn", seed=3), u.torch_clip("rn", seed=4)
  src = str(tmp_path / "regionclip.pth")
  torch.save(u.regionclip_checkpoint(student, teacher), src)
  out = str(tmp_path / "teacher")
  assert (
      convert.main(
          [
              f"--input={src}",
              f"--output={out}",
              "--part=teacher",
              "--source=regionclip",
              "--arch=resnet",
          ]
      )
      == 0
  )
  _, params = ck.read_converted(out)
  np.testing.assert_array_equal(
      params["visual"]["conv1"]["kernel"],
      teacher.visual.conv1.weight.detach().numpy().transpose(2, 3, 1, 0),
  )
  assert "wrote" in capsys.readouterr().out
  # bad input: exit code 2 and a one-line message naming the file
  assert convert.main([f"--input={src}", f"--output={out}", "--arch=vit"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and src in err and "arch='vit'" in err
