"""CLIP text tower forward: token + position embeddings -> causal transformer -> ln_final ->
the EOT token -> text_projection.

The modules live at the top level of `CLIP` (OpenAI naming: `token_embedding`,
`positional_embedding`, `transformer`, `ln_final`, `text_projection`), so this file holds the
forward as a plain function over them.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def causal_mask(length: int):
  """[L, L] bool, True where position i may attend to j (j <= i)."""
  return jnp.tril(jnp.ones((length, length), dtype=bool))


def eot_positions(tokens):
  """tokens: [B, L] int -> [B] index of the EOT token.

  EOT (49407) is the largest id, so argmax finds it whatever the pad id: with OpenAI's pad 0 and
  with HF's pad = EOT alike (argmax returns the first occurrence).
  """
  return jnp.argmax(tokens, axis=-1)


def trim_to_eot(tokens, multiple: int = 16) -> np.ndarray:
  """tokens: [B, L] int (host) -> [B, L'] with L' the smallest multiple of `multiple` (at most L)
  that holds every row's EOT.

  Under the causal mask no column after a row's EOT reaches the EOT's output, so the cut leaves
  every embedding as it was up to float rounding, and OpenAI's 77 columns shrink to 16 for
  prompts of up to 14 tokens between the start and end tokens: the text tower's work drops ~5x.
  Widths come in steps of `multiple`, so a jitted encoder compiles a handful of variants at most.
  Anything but a non-empty [B, L] array comes back as it was, for the model's own shape errors.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.size == 0:
    return tokens
  need = int(np.argmax(tokens, axis=-1).max()) + 1  # the EOT positions of `eot_positions`
  return tokens[:, : min(tokens.shape[-1], -(-need // multiple) * multiple)]


def encode_text(
    tokens, *, token_embedding, positional_embedding, transformer, ln_final, text_projection, dtype
):
  """tokens: [B, L] int (L <= context length) -> [B, D] unnormalised text embeddings."""
  length = tokens.shape[-1]
  x = token_embedding(tokens).astype(dtype)
  x = x + positional_embedding[:length].astype(dtype)[None]
  x = transformer(x, causal_mask(length))
  x = ln_final(x)
  pooled = jnp.take_along_axis(x, eot_positions(tokens)[:, None, None], axis=1)[:, 0]
  return pooled @ text_projection.astype(dtype)
