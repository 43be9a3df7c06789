"""Import guards for a machine without the project's full dependency set (e.g. the GPU image).

The benchmarks use no input pipeline, but `regionclip_jax.data` imports grain at module level
(its transforms subclass grain's). Where grain is not installed a stand-in module is put in
`sys.modules`: any attribute chain on it is a class, so the subclassing at import time works;
calling into it would fail loudly, which the benchmarks never do.
"""

from __future__ import annotations

import importlib
import sys
import types


class _Stand(type):

  def __getattr__(cls, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _Stand(name, (), {})


def stub_missing(names=("grain",)) -> list[str]:
  """Stand-ins for the modules in `names` that do not import; -> the names stubbed."""
  stubbed = []
  for name in names:
    try:
      importlib.import_module(name)
    except ImportError:
      mod = types.ModuleType(name)
      mod.__getattr__ = lambda attr: _Stand(attr, (), {})
      sys.modules[name] = mod
      stubbed.append(name)
      print(f"note: {name} is not installed; stubbed (no input pipeline runs here)", flush=True)
  return stubbed
