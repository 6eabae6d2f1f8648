"""One training step, and the gradient-projection interval boundary.

Both are pure functions of the `TrainState` and the batch; the loop jits
them over the device mesh (parameters replicated, the batch split along its
first axis), so they run unchanged on 1 device or a pod.

What a step computes changes at most three times in a run — the natural
epochs (clean CE only), the ε ramp (with the warm-up regularizers), after
the ramp (with gradient projection's natural branch) — so each `Phase` is
compiled once, statically, instead of switching terms by a traced
``lax.cond`` (which under ``grad`` costs ~12× the bound pass on CPU).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cure_jax.objectives import gradient_projection
from cure_jax.objectives.base import (
  Batch,
  StepContext,
  clean_pass,
  cross_entropy,
)
from cure_jax.objectives.objective import make_objective
from cure_jax.train import schedules
from cure_jax.train.state import TrainState, gradient_projection_on


class Schedules(NamedTuple):
  """Step -> value functions (jit-able) for the scheduled quantities."""

  eps_linf: Callable
  eps_l2: Callable
  eps_l1: Callable
  kappa: Callable
  ramp_start: int  # step
  ramp_end: int  # step
  natural_end: int  # step: κ = 1 before it


def make_schedules(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> Schedules:
  start = int(config.eps_ramp_start * steps_per_epoch)
  end = int(config.eps_ramp_end * steps_per_epoch)
  natural_end = int(config.natural_epochs * steps_per_epoch)
  return Schedules(
    eps_linf=schedules.smoothed_eps_schedule(config.eps_linf, start, end),
    eps_l2=schedules.smoothed_eps_schedule(config.eps_l2_train, start, end),
    eps_l1=schedules.smoothed_eps_schedule(config.eps_l1_train, start, end),
    kappa=schedules.kappa_schedule(natural_end),
    ramp_start=start,
    ramp_end=end,
    natural_end=natural_end,
  )


class Phase(NamedTuple):
  """The terms a step computes; static, constant over a stretch of steps.

  Attributes:
    robust: the robust term (κ < 1: after the natural epochs).
    warmup: the warm-up regularizers (during the ε ramp, if configured).
    natural_branch: gradient projection's natural updates (after the ramp).
  """

  robust: bool
  warmup: bool
  natural_branch: bool


def phase_at(config, sched: Schedules, step: int) -> Phase:
  """The `Phase` of (Python int) ``step``; the loop compiles one per phase."""
  return Phase(
    robust=step >= sched.natural_end,
    warmup=bool(config.warmup_reg)
    and config.eps_linf > 0
    and (sched.ramp_start <= step < sched.ramp_end),
    natural_branch=gradient_projection_on(config) and step >= sched.ramp_end,
  )


def step_context(config, sched: Schedules, step: jax.Array) -> StepContext:
  """The scheduled values and PRNG key of ``step``."""
  eps_linf = sched.eps_linf(step)
  in_ramp = (step >= sched.ramp_start) & (step < sched.ramp_end)
  reg_scale = jnp.where(
    in_ramp & (config.eps_linf > 0),
    schedules.warmup_regularizer_scale(
      eps_linf, max(config.eps_linf, 1e-12), config.warmup_reg_weight
    ),
    0.0,
  )
  return StepContext(
    rng=jax.random.fold_in(jax.random.key(config.seed), step),
    eps_linf=eps_linf,
    eps_l2=sched.eps_l2(step),
    eps_l1=sched.eps_l1(step),
    kappa=sched.kappa(step),
    reg_scale=reg_scale,
  )


def _natural_gradients(model, params, batch_stats, batch: Batch):
  """Clean-CE gradients at ``params`` (running statistics left untouched)."""

  def loss(p):
    logits, _, _ = clean_pass(model, p, batch_stats, batch.images)
    return cross_entropy(logits, batch.labels).mean()

  return jax.grad(loss)(params)


def make_train_step(
  config,
  model,
  optimizer: optax.GradientTransformation,
  sched: Schedules,
  phase: Phase,
):
  """Returns ``train_step(state, batch) -> (state, metrics)`` of ``phase``.

  The step is exact only for the steps of ``phase`` (`phase_at`): it leaves
  out the terms whose weight is zero elsewhere, and the gradient-projection
  branch that starts after the ramp.
  """
  # κ = 1 before `natural_end` and 0 from it on, exactly where robust starts.
  objective = make_objective(
    config,
    model,
    robust=phase.robust,
    warmup=phase.warmup,
    kappa_is_zero=phase.robust,
  )

  def train_step(state: TrainState, batch: Batch):
    ctx = step_context(config, sched, state.step)
    grad_fn = jax.value_and_grad(objective, has_aux=True)
    (_, (batch_stats, metrics)), grads = grad_fn(
      state.params, state.batch_stats, batch, ctx
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    gp = state.gp
    if phase.natural_branch:
      # The natural branch of gradient projection (docs/method.md §3): the same steps
      # with clean CE, from the interval's start, with its own optimizer state.
      g = _natural_gradients(model, gp.natural_params, state.batch_stats, batch)
      gp = gradient_projection.natural_step(gp, g, optimizer)
    metrics = dict(
      metrics,
      eps_linf=ctx.eps_linf,
      eps_l2=ctx.eps_l2,
      **({"eps_l1": ctx.eps_l1} if "l1" in config.train_norms else {}),
      kappa=ctx.kappa,
      grad_norm=optax.tree_utils.tree_norm(grads),
    )
    return TrainState(
      state.step + 1, params, batch_stats, opt_state, gp
    ), metrics

  return train_step


def is_gp_boundary(config, sched: Schedules, step: int, interval: int) -> bool:
  """Whether an interval of gradient projection ends before ``step``."""
  return (
    gradient_projection_on(config)
    and step > sched.ramp_end
    and (step - sched.ramp_end) % interval == 0
  )


def make_gp_boundary(config):
  """Returns ``boundary(state) -> state``: project, then restart the interval."""

  def boundary(state: TrainState) -> TrainState:
    params, gp = gradient_projection.finish_interval(
      state.gp, state.params, state.opt_state, config.cure.gp_beta
    )
    return state._replace(params=params, gp=gp)

  return boundary


def make_gp_restart():
  """Returns ``restart(state) -> state``: start an interval at the current params."""

  def restart(state: TrainState) -> TrainState:
    return state._replace(
      gp=gradient_projection.init_state(state.params, state.opt_state)
    )

  return restart
