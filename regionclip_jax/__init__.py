"""regionclip_jax: RegionCLIP (CVPR 2022) in JAX / Flax.

Stage 1: region-level language-image pretraining (`regionclip_jax.pretrain`).
Stage 2: open-vocabulary Faster R-CNN transfer (`regionclip_jax.detection`).
"""

__version__ = "0.1.0"
