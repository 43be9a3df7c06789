"""Command-line flags generated from a config section, so a tool's flags, their defaults and the
`main --config=...` form of the same job cannot drift apart.

A tool's config file has presets and one section (e.g. `zero_shot`); every field of the default
preset's section becomes an absl flag of its type, plus `--preset`. Values given on the command
line (and the tool's own defaults for fields such as an output folder, which the config leaves to
the workdir) are written over the chosen preset.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import ml_collections
from absl import flags


def define_flags(
    get_config: Callable[..., ml_collections.ConfigDict],
    presets: Sequence[str],
    default_preset: str,
    section: str,
    help_text: Mapping[str, str],
    choices: Mapping[str, Sequence[str]] = (),
    tool_defaults: Mapping[str, object] = (),
) -> None:
  """One absl flag per field of `get_config()[section]` (enum for `choices`), plus `--preset`."""
  choices, tool_defaults = dict(choices), dict(tool_defaults)
  flags.DEFINE_enum("preset", default_preset, list(presets), "config preset")
  for name, default in get_config()[section].items():
    default, help_ = tool_defaults.get(name, default), help_text.get(name, name)
    if name in choices:
      flags.DEFINE_enum(name, default, list(choices[name]), help_)
    elif isinstance(default, bool):
      flags.DEFINE_bool(name, default, help_)
    elif isinstance(default, int):
      flags.DEFINE_integer(name, default, help_)
    elif isinstance(default, float):
      flags.DEFINE_float(name, default, help_)
    else:
      flags.DEFINE_string(name, default, help_)


def config_from_flags(
    values,
    get_config: Callable[..., ml_collections.ConfigDict],
    section: str,
    tool_defaults: Mapping[str, object] = (),
) -> ml_collections.ConfigDict:
  """`get_config(--preset)` with the fields given on the command line (and the tool's own
  defaults) written over its `section`."""
  cfg = get_config(values.preset)
  tool_defaults = dict(tool_defaults)
  for name in cfg[section].keys():
    if values[name].present or name in tool_defaults:
      cfg[section][name] = values[name].value
  return cfg
