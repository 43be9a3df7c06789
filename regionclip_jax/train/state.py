"""Train state and the masked update shared by every stage (CLIP teacher, RegionCLIP, detector)."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from regionclip_jax.train.optimizer import merge, select

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar; params: the full tree (frozen leaves included, so one checkpoint holds the
  whole model); opt_state: over the trainable leaves only (frozen leaves carry no momentum)."""

  step: jax.Array
  params: PyTree
  opt_state: PyTree


def create_train_state(
    params: PyTree, tx: optax.GradientTransformation, mask: PyTree
) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(select(params, mask))
  )


def masked_value_and_grad(
    loss_fn: Callable[..., tuple[jax.Array, Any]], params: PyTree, mask: PyTree, *args
):
  """value_and_grad of `loss_fn(params, *args) -> (loss, aux)` w.r.t. the trainable leaves only.

  Frozen leaves enter through stop_gradient, so XLA never builds their weight gradients.
  Returns ((loss, aux), grads) with grads over `select(params, mask)`.
  """
  frozen = jax.lax.stop_gradient(params)

  def f(train):
    return loss_fn(merge(train, frozen, mask), *args)

  return jax.value_and_grad(f, has_aux=True)(select(params, mask))


def apply_gradients(
    state: TrainState, grads: PyTree, tx: optax.GradientTransformation, mask: PyTree
) -> TrainState:
  """One optimiser update of the trainable leaves; frozen leaves are passed through untouched
  (not `p + 0`, which would turn -0.0 into +0.0), hence bit-identical."""
  train = select(state.params, mask)
  updates, opt_state = tx.update(grads, state.opt_state, train)
  new_train = optax.apply_updates(train, updates)
  return TrainState(
      step=state.step + 1, params=merge(new_train, state.params, mask), opt_state=opt_state
  )
