"""Region encoder: whole-image box == the image-level CLIP forward (ResNet), patch box == patch
token readout (ViT); regions are independent of each other and of padding boxes."""

import jax
import jax.numpy as jnp
import numpy as np

from regionclip_jax.models import clip
from regionclip_jax.models.region_encoder import global_boxes, region_features

_TEXT = clip.TextConfig(context_length=8, vocab_size=64, width=16, heads=1, layers=1)
CONFIGS = {  # smaller than the tiny presets: fast to compile, same code paths
    "rn": clip.CLIPConfig(16, clip.ResNetConfig((1, 1, 1, 1), 8, 2, 64), _TEXT),
    "vit": clip.CLIPConfig(16, clip.ViTConfig(32, 8, 32, 1, 1), _TEXT),
}


def _setup(name, n=2):
  cfg = CONFIGS[name]
  params = clip.init_params(cfg, seed=1)
  module = clip.CLIP(cfg)
  s = cfg.image_size
  images = jax.random.normal(jax.random.PRNGKey(0), (n, s, s, 3))
  return module, params, images


def test_resnet_whole_image_box_equals_encode_image():
  module, params, images = _setup("rn")
  boxes = jnp.concatenate(
      [global_boxes(images), jnp.asarray([[[8.0, 4.0, 40.0, 30.0]]] * 2)], axis=1
  )  # [2, 2, 4]
  f = jax.jit(lambda p, x, b: region_features(module, p, x, b))
  got = f(params, images, boxes)
  want = module.apply({"params": params}, images, method=clip.CLIP.encode_image)
  assert got.shape == (2, 2, CONFIGS["rn"].embed_dim)
  np.testing.assert_allclose(got[:, 0], want, rtol=2e-4, atol=2e-5)
  # a region is independent of the other boxes in the batch (padding boxes change nothing)
  alone = f(params, images, boxes[:, 1:])
  np.testing.assert_allclose(got[:, 1], alone[:, 0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(got[:, 0], got[:, 1], atol=1e-3)


def test_vit_patch_box_reads_out_that_token():
  module, params, images = _setup("vit")
  cfg = CONFIGS["vit"]
  p = cfg.vision.patch_size
  cls, grid = module.apply({"params": params}, images, method=clip.CLIP.image_tokens)
  i, j = 1, 2
  boxes = jnp.asarray([[[j * p, i * p, (j + 1) * p, (i + 1) * p]]] * 2, jnp.float32)
  got = region_features(module, params, images, boxes, pooler_resolution=1)
  want = module.apply({"params": params}, grid[:, i, j], method=clip.CLIP.image_project)
  np.testing.assert_allclose(got[:, 0], want, rtol=1e-4, atol=1e-5)
  # whole image with one bin per patch = projection of the mean patch token
  g = grid.shape[1]
  got_all = region_features(module, params, images, global_boxes(images), pooler_resolution=g)
  want_all = module.apply(
      {"params": params}, grid.mean(axis=(1, 2)), method=clip.CLIP.image_project
  )
  np.testing.assert_allclose(got_all[:, 0], want_all, rtol=1e-4, atol=1e-5)
