"""The checkpoint readers' one exception type and the helpers that keep its messages one line."""

from __future__ import annotations


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not fit; the message names the file and the key."""


def first_line(e: Exception) -> str:
  """`Type: first sentence` of an exception (library messages run to paragraphs)."""
  lines = str(e).strip().splitlines()
  first = lines[0] if lines else ""
  cut = first.find(". ", 20)
  return f"{type(e).__name__}: {first[:cut + 1] if cut > 0 else first}"[:300]


def one_line(e: Exception) -> str:
  """First problem of a multi-line report, with the count of the others."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  if len(lines) <= 1:
    return lines[0] if lines else type(e).__name__
  rest = len(lines) - 2
  return f"{lines[0]} {lines[1]}" + (f" (and {rest} more)" if rest > 0 else "")
