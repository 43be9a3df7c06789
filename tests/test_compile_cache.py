"""train/compile_cache.py: programs compiled in the block land in the workdir's cache; a job that
fails before writing anything else leaves an empty workdir, one that fails later keeps its cache
for the resume."""

import jax
import jax.numpy as jnp
import pytest

from regionclip_jax.train.compile_cache import compilation_cache


def _compile_into(tmp_path, write_output: bool):
  cache = tmp_path / "xla_cache"
  with pytest.raises(RuntimeError, match="stop"):
    with compilation_cache(str(cache)):
      min_time = jax.config.jax_persistent_cache_min_compile_time_secs
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # cache this tiny one
      try:
        jax.jit(lambda x: jnp.sin(x) * 3.0 + x.sum())(jnp.arange(7.0)).block_until_ready()
        assert any(cache.iterdir())  # the program was written
      finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)
      if write_output:
        (tmp_path / "checkpoints").mkdir()
      raise RuntimeError("stop")
  assert not jax.config.jax_compilation_cache_dir  # switched off after the block
  return cache


def test_failure_before_any_output_leaves_an_empty_workdir(tmp_path):
  _compile_into(tmp_path, write_output=False)
  assert list(tmp_path.iterdir()) == []


def test_failure_after_outputs_keeps_the_cache_for_the_resume(tmp_path):
  cache = _compile_into(tmp_path, write_output=True)
  assert any(cache.iterdir())
