"""JAX's persistent compilation cache for one job, kept in its workdir."""

from __future__ import annotations

import contextlib
import os
import shutil

import jax
from jax.experimental.compilation_cache import compilation_cache as cc


@contextlib.contextmanager
def compilation_cache(directory: str):
  """JAX's persistent compilation cache in `directory` for the block: a resumed or re-run job
  (and the pipeline's three detector fine-tunes, which build identical programs) loads its XLA
  programs instead of compiling them again. A cache the user configured
  (JAX_COMPILATION_CACHE_DIR, shared across workdirs) is left alone, and so is one an enclosing
  block set. The cache is trusted code: it lives in the job's own workdir. A job that fails
  before writing anything else to that workdir (bad input) takes its new cache folder with it, so
  the workdir stays empty; one interrupted later keeps the cache for its resume."""
  if jax.config.jax_compilation_cache_dir:
    yield
    return
  existed = os.path.isdir(directory)
  cc.set_cache_dir(directory)
  cc.reset_cache()  # an earlier compile in this process may have settled on "no cache"
  failed = True
  try:
    yield
    failed = False
  finally:
    cc.set_cache_dir(None)
    cc.reset_cache()
    if failed and not existed and _only_entry(directory):
      shutil.rmtree(directory, ignore_errors=True)


def _only_entry(directory: str) -> bool:
  """Whether `directory` is all its parent folder holds."""
  parent = os.path.dirname(os.path.abspath(directory))
  return os.path.isdir(directory) and os.listdir(parent) == [os.path.basename(directory)]
