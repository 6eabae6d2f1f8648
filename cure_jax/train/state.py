"""The training state: one pytree, checkpointed whole.

Randomness is not part of it: the PRNG key of step t is
``fold_in(key(seed), t)`` and the batch of step t a pure function of
(seed, t), so a run restored at step t continues exactly as it would have.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cure_jax.models import ibp_init
from cure_jax.objectives.gradient_projection import (
  init_state,
)
from cure_jax.train import schedules


class TrainState(NamedTuple):
  """Everything that changes during training.

  Attributes:
    step: the number of steps taken (int32 scalar).
    params: model parameters.
    batch_stats: BatchNorm running statistics.
    opt_state: the optax state.
    gp: `GradientProjectionState` when gradient projection is on, else ().
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  gp: Any


def make_optimizer(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
  """Adam with multi-step decay and gradient-norm clipping (docs/method.md §4)."""
  milestones = [int(e * steps_per_epoch) for e in config.lr_milestones]
  lr = schedules.multistep_lr_schedule(
    config.learning_rate, milestones, config.lr_decay
  )
  return optax.chain(
    optax.clip_by_global_norm(config.grad_clip_norm), optax.adam(lr)
  )


def gradient_projection_on(config) -> bool:
  return config.cure.gp_beta > 0


def create_train_state(
  config: ml_collections.ConfigDict,
  model,
  optimizer: optax.GradientTransformation,
  input_shape,
) -> TrainState:
  """Initializes parameters (IBP initialization by default) and optimizer."""
  init_key, ibp_key = jax.random.split(jax.random.key(config.seed))
  variables = model.init(
    init_key, jnp.zeros((2,) + tuple(input_shape)), train=False
  )
  params = variables["params"]
  if config.init == "ibp":
    params = ibp_init(params, ibp_key)
  elif config.init != "default":
    raise ValueError(
      f"unknown init {config.init!r}; valid ones are ['ibp', 'default']."
    )
  return fresh_state(
    config, params, variables.get("batch_stats", {}), optimizer
  )


def fresh_state(config, params, batch_stats, optimizer) -> TrainState:
  """A step-0 state around given parameters (also used to fine-tune)."""
  opt_state = optimizer.init(params)
  gp = init_state(params, opt_state) if gradient_projection_on(config) else ()
  return TrainState(
    jnp.zeros((), jnp.int32), params, batch_stats, opt_state, gp
  )
