"""Image decoding with the bad-record policy: a missing or corrupt image never crashes a skip run."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from regionclip_jax.data.validation import IssueCounter, handle


def decode_image(
    data: bytes | str | os.PathLike, *, policy: str, counter: IssueCounter | None, where: str
) -> np.ndarray | None:
  """Encoded bytes or a file path -> uint8 [H, W, 3] RGB; None (counted) in skip mode on failure."""
  if isinstance(data, (str, os.PathLike)) and not os.path.isfile(data):
    handle(policy, counter, "missing_image", where, os.fspath(data))
    return None
  try:
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(src) as im:
      im.load()  # force the full decode here: a truncated file fails now, not later
      arr = np.asarray(im.convert("RGB"))
  except Exception as e:  # PIL raises many types for bad data; all mean "corrupt image"
    handle(policy, counter, "corrupt_image", where, f"{type(e).__name__}: {e}"[:120])
    return None
  if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
    handle(policy, counter, "corrupt_image", where, f"decoded shape {arr.shape}")
    return None
  return arr
