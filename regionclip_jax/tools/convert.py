"""Convert any supported CLIP checkpoint, or an official offline RPN, into our formats (no PyTorch
needed to read the result).

    python -m regionclip_jax.tools.convert --input=PATH --output=DIR \
        [--source=openai|hf|open_clip|regionclip|converted|detectron2_rpn|regionclip_detector] \
        [--part=student|teacher] \
        [--text_from=PATH] [--arch=resnet|vit]

CLIP: writes DIR/config.json (architecture + provenance) and DIR/params.safetensors (Flax params,
flattened with '/'), which `regionclip_jax.models.clip.load(DIR)` reads.
Offline RPN (`rpn_coco_48.pth`, `rpn_lvis_866.pth`, `rpn_lvis_866_lsj.pth`: detectron2 ResNet + RPN,
detected from the keys): writes an RPN export (DIR/model.json + DIR/variables.msgpack), which
`tools.zero_shot --rpn=DIR` and the configs' `rpn.checkpoint=DIR` read
(`detection.export.load_rpn`).
Fine-tuned detector (`regionclip_finetuned-coco_rn50.pth`, ...: CLIP backbone + box predictor,
detected from the keys): writes a detector export with its class embeddings beside it, which
`tools.zero_shot --checkpoint=DIR` reads; with `--text_from=PATH` its image tower converts as a
CLIP instead.

One file in, one model out, so bad input is always an error (strict; there is no skip mode): an
empty, truncated or foreign file, a missing, mis-shaped or non-finite (NaN / inf) tensor stops it
with one line naming the file and the key, and exit status 2. Nothing is written before the
input has been read and checked; each output file is written atomically, the marker
(config.json / model.json) last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from flax.traverse_util import flatten_dict

from regionclip_jax.detection import export
from regionclip_jax.models import checkpoints
from regionclip_jax.models.checkpoints.detect import REGIONCLIP_DETECTOR
from regionclip_jax.models.checkpoints.torch_files import read_weights_file


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m regionclip_jax.tools.convert",
      description=__doc__.split("\n\n")[0],
      epilog=__doc__.split("\n\n")[-1],
  )
  p.add_argument("--input", required=True, help="checkpoint file or directory")
  p.add_argument("--output", required=True, help="directory to write")
  p.add_argument(
      "--source",
      choices=checkpoints.SOURCES + (checkpoints.DETECTRON2_RPN, REGIONCLIP_DETECTOR),
      default=None,
      help="input format (detected when omitted)",
  )
  p.add_argument(
      "--part",
      choices=("student", "teacher"),
      default="student",
      help="RegionCLIP pretraining checkpoints: which image tower",
  )
  p.add_argument(
      "--text_from",
      default=None,
      help="checkpoint supplying the text tower when --input has none "
      "(RegionCLIP fine-tuned detector)",
  )
  p.add_argument(
      "--arch",
      choices=("resnet", "vit"),
      default=None,
      help="fail unless the image tower is of this kind",
  )
  return p


def check_finite(flat: dict, path: str, what: str = "tensor") -> None:
  """CheckpointError naming the first floating tensor of `flat` holding NaN or inf."""
  for key in sorted(flat):
    v = np.asarray(flat[key])
    if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
      bad = int(v.size - np.count_nonzero(np.isfinite(v)))
      raise checkpoints.CheckpointError(
          f"{path}: {what} {key} holds {bad} non-finite value(s) (NaN / inf) of {v.size}: "
          "a corrupt checkpoint, not converted"
      )


def convert(
    input_path: str,
    output: str,
    source: str | None = None,
    part: str = "student",
    text_from: str | None = None,
    arch: str | None = None,
) -> str:
  """Returns the output directory."""
  if os.path.exists(output) and not os.path.isdir(output):
    raise checkpoints.CheckpointError(f"{output}: --output exists and is not a directory")
  found = source or checkpoints.detect_kind(input_path)
  if found == checkpoints.DETECTRON2_RPN:
    # the export reads and writes in one call: check the weights before it writes anything
    check_finite(read_weights_file(input_path), input_path)
    export.export_detectron2_rpn(input_path, output)
    return output
  if found == REGIONCLIP_DETECTOR and text_from:
    found = "regionclip"  # its image tower as a CLIP, the text tower from `text_from`
  elif found == REGIONCLIP_DETECTOR:
    check_finite(read_weights_file(input_path), input_path)
    export.export_regionclip_detector(input_path, output)
    return output
  loaded = checkpoints.load(input_path, source=found, part=part, text_from=text_from, arch=arch)
  check_finite(flatten_dict(loaded.params, sep="/"), input_path, "parameter")
  return checkpoints.save_converted(output, loaded.config, loaded.params, source=found)


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    out = convert(args.input, args.output, args.source, args.part, args.text_from, args.arch)
  except (checkpoints.CheckpointError, ValueError, OSError) as e:
    # a reader's own ValueError / OSError may not name the file: prefix it then
    text = " ".join(str(e).split()) or type(e).__name__
    name = "" if args.input in text or args.output in text else f"{args.input}: "
    print(f"convert: error: {name}{text}", file=sys.stderr)
    return 2
  if export.is_export(out):
    with open(os.path.join(out, export.EXPORT_META)) as f:
      meta = json.load(f)
    if meta["kind"] == "detector":
      print(
          f"convert: wrote {out} (RegionCLIP fine-tuned C4 detector, "
          f"{meta.get('num_classes', '?')} test classes); use it as --checkpoint={out} "
          f"--embeddings={os.path.join(out, 'class_embeddings.npy')}"
      )
      return 0
    print(
        f"convert: wrote {out} (detectron2 R-{2 + 3 * sum(meta['blocks_per_stage'])} "
        f"{meta['arch'].upper()} RPN, {meta['rpn_convs']} head conv(s)); "
        f"use it as --rpn={out} or rpn.checkpoint={out}"
    )
    return 0
  cfg = checkpoints.read_converted(out)[0]
  kind = "ResNet" if cfg.is_resnet else "ViT"
  print(
      f"convert: wrote {out} ({kind} CLIP, embed_dim {cfg.embed_dim}, image size {cfg.image_size})"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
