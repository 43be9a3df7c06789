"""OpenAI CLIP checkpoints: a `.pt` TorchScript archive (OpenAI's releases) or a plain
`torch.save`d state dict, both already in the OpenAI names every other format is renamed to.

The files themselves are read by `torch_files`; this module recognises and checks the names.
"""

from __future__ import annotations

from typing import Any

from regionclip_jax.models.checkpoints.errors import CheckpointError


def looks_openai(sd) -> bool:
  """Keys (or a state dict) with an image tower (`visual.*`) and OpenAI's token embedding."""
  return any(k.startswith("visual.") for k in sd) and "token_embedding.weight" in sd


def check_openai(sd: dict[str, Any], where: str) -> dict[str, Any]:
  """`sd` itself, or a CheckpointError naming `where` and the first keys if it is not OpenAI's."""
  if not looks_openai(sd):
    raise CheckpointError(
        f"{where}: not an OpenAI CLIP state dict (no visual.* / "
        f"token_embedding.weight; first keys: {list(sd)[:5]})"
    )
  return sd
