"""Image decoding with the bad-record policy: a missing or corrupt image never crashes a skip run.

Reduced-size decoding (`draft_for`): a JPEG at least twice the size of the largest resize that
follows is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (PIL `Image.draft`, a DCT-domain
downscale), never below that resize's output size, so the resize still starts from at least as
many pixels as it produces. Measured on the scikit-image photos (astronaut, coffee, chelsea,
rocket) resized and saved as JPEG quality 90, then resized to 1067x800 (shorter side 800) with
PIL bicubic: draft + resize vs full decode + the same resize differ by at most 14 uint8 levels,
mean 0.33 (2400x1800, decoded at 1200x900), and at most 9, mean 0.24 (3200x2400 at 1600x1200);
bilinear and a 640 shorter side give the same or smaller figures. With the cv2 resize on top
(transforms.resize_image), vs the official full decode + PIL resize: at most 19 / 23 levels,
mean 0.36 / 0.32 (bicubic / bilinear, 2400x1800 -> 1067x800; at most 29, mean 0.42 for 853x640).
Images under twice the target (COCO's 640x480, 1600x1200 for 800 px) decode exactly as without.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from regionclip_jax.data.validation import IssueCounter, handle


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
  """detectron2 ResizeShortestEdge.get_output_shape: shorter side -> short, longer <= max_size."""
  scale = short / min(h, w)
  newh, neww = (short, scale * w) if h < w else (scale * h, short)
  if max(newh, neww) > max_size:
    s = max_size / max(newh, neww)
    newh, neww = newh * s, neww * s
  return int(newh + 0.5), int(neww + 0.5)


def draft_scale(h: int, w: int, draft_for: tuple[int, int] | None) -> int:
  """The JPEG scale denominator (1, 2, 4 or 8) that `decode_image` uses for an h x w image.

  `draft_for` = (short_edge, max_size) of the largest shortest-edge resize applied later.
  The decoded size is ceil(h / s) x ceil(w / s) >= that resize's output size.
  """
  if draft_for is None:
    return 1
  th, tw = shortest_edge_size(h, w, int(draft_for[0]), int(draft_for[1]))
  fit = min(h // max(th, 1), w // max(tw, 1))  # PIL's own rule: largest s with size / s >= target
  for s in (8, 4, 2):
    if fit >= s:
      return s
  return 1


def decode_image_and_size(
    data: bytes | str | os.PathLike,
    *,
    policy: str,
    counter: IssueCounter | None,
    where: str,
    draft_for: tuple[int, int] | None = None,
) -> tuple[np.ndarray, tuple[int, int]] | None:
  """Like `decode_image`, also returning the image's full (height, width) as stored in the file.

  With `draft_for` the array may be smaller than that size (see the module docstring); callers
  with boxes in the file's pixel frame scale them by the array's size over this one.
  """
  if isinstance(data, (str, os.PathLike)) and not os.path.isfile(data):
    handle(policy, counter, "missing_image", where, os.fspath(data))
    return None
  try:
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(src) as im:
      full = (im.height, im.width)
      # Only when a whole factor of 2 fits: below it draft would be a no-op anyway, and not
      # calling it keeps such images on exactly the decode path used without draft_for.
      if draft_scale(*full, draft_for) > 1:
        th, tw = shortest_edge_size(*full, int(draft_for[0]), int(draft_for[1]))
        im.draft("RGB", (tw, th))
      im.load()  # force the full decode here: a truncated file fails now, not later
      arr = np.asarray(im.convert("RGB"))
  except Exception as e:  # PIL raises many types for bad data; all mean "corrupt image"
    handle(policy, counter, "corrupt_image", where, f"{type(e).__name__}: {e}"[:120])
    return None
  if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
    handle(policy, counter, "corrupt_image", where, f"decoded shape {arr.shape}")
    return None
  return arr, full


def decode_image(
    data: bytes | str | os.PathLike,
    *,
    policy: str,
    counter: IssueCounter | None,
    where: str,
    draft_for: tuple[int, int] | None = None,
) -> np.ndarray | None:
  """Encoded bytes or a file path -> uint8 [H, W, 3] RGB; None (counted) in skip mode on failure.

  `draft_for` = (short_edge, max_size) of the largest resize that follows allows a reduced-size
  JPEG decode (module docstring); None decodes at full size.
  """
  out = decode_image_and_size(
      data, policy=policy, counter=counter, where=where, draft_for=draft_for
  )
  return None if out is None else out[0]


def with_original_size(record: dict, full: tuple[int, int]) -> dict:
  """Marks a record whose image was decoded below its full size: `orig_size` int32 [2] (h, w)
  lets the resize transforms compute the output size from the full size, as without drafting,
  and boxes are moved to the decoded image's frame so that image and boxes always agree."""
  h, w = record["image"].shape[:2]
  if (h, w) == tuple(full):
    return record
  record["orig_size"] = np.array(full, np.int32)
  if "boxes" in record:
    scale = np.array([w / full[1], h / full[0], w / full[1], h / full[0]], np.float32)
    record["boxes"] = np.asarray(record["boxes"], np.float32).reshape(-1, 4) * scale
  return record
