"""Config files of `python -m regionclip_jax.main --config=configs/<name>.py[:preset]`.

A package, so that a config builds on another (`from configs import finetune`) whether it is
loaded by path from the repository root or imported after `pip install -e .`.
"""
