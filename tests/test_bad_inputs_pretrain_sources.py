"""Pretraining's image-text sources over corrupted TSV pairs (property test): data-level problems
(an image that does not decode, empty captions) follow data.on_error -- skip drops and counts
them, strict names the file and row -- and a structural one (a row without its tab, keys that do
not match, text that is not json) is one line naming the file and row in both modes."""

import base64
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from skimage import data as skdata

from regionclip_jax.data.image_text import TsvImageText
from regionclip_jax.data.validation import DataError, IssueCounter


def _jpeg() -> bytes:
  buf = io.BytesIO()
  Image.fromarray(skdata.chelsea()[::8, ::8]).save(buf, format="JPEG", quality=85)
  return buf.getvalue()


GOOD = _jpeg()
# row kind -> (image field, text field, what skip mode counts, or "structural")
ROWS = {
    "good": (base64.b64encode(GOOD).decode(), json.dumps({"captions": ["a cat"]}), None),
    "truncated": (
        base64.b64encode(GOOD[: len(GOOD) // 3]).decode(),
        json.dumps({"captions": ["a cat"]}),
        "corrupt_image",
    ),
    "not_an_image": (
        base64.b64encode(b"hello, world").decode(),
        json.dumps({"captions": ["x"]}),
        "corrupt_image",
    ),
    "bad_base64": ("@@not base64@@", json.dumps({"captions": ["x"]}), "corrupt_image"),
    "empty_caption": (base64.b64encode(GOOD).decode(), json.dumps({"captions": [" "]}), "empty"),
    "number_caption": (base64.b64encode(GOOD).decode(), json.dumps({"captions": [7]}), "empty"),
    "nan_caption": (base64.b64encode(GOOD).decode(), '{"captions": [NaN]}', "empty"),
    "text_not_json": (base64.b64encode(GOOD).decode(), "{captions: oops", "structural"),
    "no_captions_field": (base64.b64encode(GOOD).decode(), json.dumps({"c": 1}), "structural"),
    "key_mismatch": (base64.b64encode(GOOD).decode(), json.dumps({"captions": ["x"]}), "key"),
}


def _write(tmp, kinds):
  image_tsv, text_tsv = tmp / "img.tsv", tmp / "txt.tsv"
  with open(image_tsv, "w") as fi, open(text_tsv, "w") as ft:
    for i, kind in enumerate(kinds):
      img, txt, _ = ROWS[kind]
      fi.write(f"k{i}\t{img}\n")
      ft.write(f"{'other' if kind == 'key_mismatch' else f'k{i}'}\t{txt}\n")
  return str(image_tsv), str(text_tsv)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(sorted(ROWS)), min_size=1, max_size=8))
def test_corrupted_tsv_rows_are_named_counted_or_skipped(tmp_path_factory, kinds):
  tmp = tmp_path_factory.mktemp("tsv")
  image_tsv, text_tsv = _write(tmp, kinds)
  counter = IssueCounter("tsv")
  src = TsvImageText(image_tsv, text_tsv, policy="skip", counter=counter)
  assert len(src) == len(kinds)
  want_skipped = 0
  for i, kind in enumerate(kinds):
    what = ROWS[kind][2]
    if what in ("structural", "key"):
      with pytest.raises(ValueError) as info:
        src[i]
      msg = str(info.value)
      assert "\n" not in msg and f"row {i + 1}" in msg and "txt.tsv" in msg, msg
      continue
    record = src[i]
    if what is None:
      assert record is not None and record["captions"] == ["a cat"]
      assert record["image"].dtype == np.uint8 and record["image"].shape[2] == 3
    else:
      assert record is None, kind
      want_skipped += 1
  counts = counter.counts
  assert counts.get("corrupt_image", 0) == sum(ROWS[k][2] == "corrupt_image" for k in kinds)
  # an empty caption is counted, then its record (with no caption left) is
  empties = sum(ROWS[k][2] == "empty" for k in kinds)
  assert counts.get("empty_caption", 0) == empties == counts.get("record_without_captions", 0)
  assert want_skipped == counts.get("corrupt_image", 0) + empties

  strict = TsvImageText(image_tsv, text_tsv, policy="strict")
  for i, kind in enumerate(kinds):
    if ROWS[kind][2] in (None, "structural", "key"):
      continue
    with pytest.raises(DataError) as info:
      strict[i]
    msg = str(info.value)
    assert "\n" not in msg and f"row {i + 1}" in msg, msg
    break
