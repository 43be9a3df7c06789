"""Read CLIP checkpoints of every public format into one OpenAI-named numpy state dict, and load
them as a `LoadedCLIP`.

Formats (`source`):
- "openai": OpenAI `.pt` (TorchScript archive, or a plain `torch.save`d state dict).
- "hf": transformers `CLIPModel` (directory with `config.json` + `model.safetensors` /
  `pytorch_model.bin`, sharded or not, or one of those files).
- "open_clip": `open_clip_model.safetensors` / `open_clip_pytorch_model.bin` (+ optional
  `open_clip_config.json`), or an open_clip training checkpoint (`{"state_dict": ...}`,
  `module.` prefixes).
- "regionclip": a RegionCLIP detectron2 `.pth` (`{"model": ...}` with `backbone.*`,
  `teacher_backbone.*`, `lang_encoder.*`).
- "converted": a directory written by `save_converted` / `tools/convert.py`
  (`config.json` + `params.safetensors`), read without PyTorch.

Not CLIP, beside them: `detectron2` renames the official offline RPNs (`DETECTRON2_RPN`, told
apart by `detect_kind`) to the Flax params of `detection/offline_rpn.py`; `embeddings` reads
class-embedding files (`.npy`, or the official `.pth` tensors).

Safety: pickles are only ever opened with `torch.load(weights_only=True)`, and TorchScript
archives with an allow-list unpickler of our own (no PyTorch, none of the archive's code run): a
checkpoint whose pickle would import or call arbitrary code is refused. PyTorch is needed only for
non-TorchScript `.pt/.pth/.bin` pickles; safetensors, TorchScript and converted directories read
without it.

Layout, bottom up: `errors` (CheckpointError); low-level readers `safetensors_io` and
`torch_files`; one file per format with its file layout and renaming to OpenAI names (`openai`,
`hf`, `open_clip`, `regionclip`) and our own format (`converted`); `detect` (which format, where
the weights are); `loader` (`read_state_dict`, `load`). This file re-exports the public names.
"""

from regionclip_jax.models.checkpoints.converted import (
    CONFIG_NAME,
    CONVERTED_FORMAT,
    CONVERTED_VERSION,
    PARAMS_NAME,
    _flatten_params,  # tests/test_convert.py compares param trees with it
    read_converted,
    save_converted,
)
from regionclip_jax.models.checkpoints.detect import (
    DETECTRON2_RPN,
    SOURCES,
    detect_kind,
    detect_source,
)
from regionclip_jax.models.checkpoints.detectron2 import detectron2_rpn_params, is_detectron2_rpn
from regionclip_jax.models.checkpoints.embeddings import read_embeddings
from regionclip_jax.models.checkpoints.errors import CheckpointError
from regionclip_jax.models.checkpoints.hf import HF_INDEXES, HF_WEIGHTS
from regionclip_jax.models.checkpoints.loader import architecture_of, load, read_state_dict
from regionclip_jax.models.checkpoints.open_clip import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS
from regionclip_jax.models.checkpoints.safetensors_io import read_safetensors
from regionclip_jax.models.checkpoints.torch_files import read_torch_file, read_torchscript_archive

__all__ = [
    "CONFIG_NAME",
    "CONVERTED_FORMAT",
    "CONVERTED_VERSION",
    "DETECTRON2_RPN",
    "HF_INDEXES",
    "HF_WEIGHTS",
    "OPEN_CLIP_CONFIG",
    "OPEN_CLIP_WEIGHTS",
    "PARAMS_NAME",
    "SOURCES",
    "CheckpointError",
    "architecture_of",
    "detect_kind",
    "detect_source",
    "detectron2_rpn_params",
    "is_detectron2_rpn",
    "load",
    "read_converted",
    "read_embeddings",
    "read_safetensors",
    "read_state_dict",
    "read_torch_file",
    "read_torchscript_archive",
    "save_converted",
]
