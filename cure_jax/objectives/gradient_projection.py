"""Gradient projection (GP): natural updates mixed in (docs/method.md §3).

Once per interval (an epoch in the reference), after the ε ramp has ended:
θ0 are the parameters at the start of the interval, θc the parameters after
the interval's certified updates and θn those after as many natural
(clean cross-entropy) updates started from θ0 with a copy of the optimizer
state. Per parameter tensor, with g_c = θc − θ0 and g_n = θn − θ0,

  θ ← θ0 + (1 − β)·g_c + [cs > 0]·β·cs·g_n,   cs = cos(g_c, g_n),

i.e. the certified update is shrunk by 1 − β and the natural update, scaled
by its cosine with the certified one, is added where the two agree.

Usage, for a pure training loop::

  gp = init_state(params, opt_state)              # start of an interval
  for batch in interval:
    params, opt_state = certified_step(params, opt_state, batch)
    gp = natural_step(gp, clean_ce_grads(gp.natural_params, batch), optimizer)
  params, gp = finish_interval(gp, params, opt_state, beta)

BatchNorm running statistics are not parameters and are not projected: the
caller keeps those of the certified model θc (docs/method.md §3, Decision; the
reference mixes them too) and discards any statistics the natural steps
produce. Unlike the reference, every natural step uses that step's gradient
alone (the reference never zeroes them, so they accumulate).

GP acts on parameters only, so it is the same for any number of threat
models: θc comes from whichever certified objective (two or three norms).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from cure_jax.types import Params


class GradientProjectionState(NamedTuple):
  """What GP carries through one interval.

  Attributes:
    anchor_params: θ0, the parameters at the start of the interval.
    natural_params: θn, θ0 after the interval's natural updates so far.
    natural_opt_state: the optimizer state of the natural copy.
  """

  anchor_params: Params
  natural_params: Params
  natural_opt_state: optax.OptState


def cosine_similarity(
  a: jax.Array, b: jax.Array, eps: float = 1e-8
) -> jax.Array:
  """cos(a, b) of the flattened arrays, with each norm clamped below by eps.

  ⟨a, b⟩ / (max(‖a‖, ε)·max(‖b‖, ε)), as PyTorch's ``cosine_similarity``
  in the reference: 0 when either array is 0, never NaN.

  Args:
    a: any array.
    b: an array of the same shape.
    eps: lower bound on each norm.

  Returns:
    The scalar cosine, in float32 or wider.
  """
  dtype = jnp.promote_types(jnp.result_type(a, b), jnp.float32)
  a, b = jnp.ravel(a).astype(dtype), jnp.ravel(b).astype(dtype)
  norms = jnp.maximum(jnp.linalg.norm(a), eps) * jnp.maximum(
    jnp.linalg.norm(b), eps
  )
  return jnp.vdot(a, b) / norms


def _check_same_structure(**trees: Params) -> None:
  """Raises a ValueError unless all trees have one structure and leaf shapes."""
  (first_name, first), *others = trees.items()
  reference = jax.tree.structure(first)
  shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(first)]
  for name, tree in others:
    if (
      jax.tree.structure(tree) != reference
      or [jnp.shape(leaf) for leaf in jax.tree.leaves(tree)] != shapes
    ):
      raise ValueError(
        f"{name} must have the structure and leaf shapes of {first_name} "
        f"(the same model's parameters); got {jax.tree.structure(tree)} "
        f"for {reference}."
      )


def project(
  theta0: Params, theta_c: Params, theta_n: Params, beta, *, eps: float = 1e-8
) -> Params:
  """GP's update θ0 + (1 − β)·g_c + [cs > 0]·β·cs·g_n, per pytree leaf.

  Args:
    theta0: the parameters at the start of the interval.
    theta_c: the parameters after the certified updates.
    theta_n: the parameters after the natural updates.
    beta: weight β ∈ [0, 1] of the natural direction (0.8 or 0.5 in the
      reference); β = 0 returns θc.
    eps: lower bound on the norms in the cosine (`cosine_similarity`).

  Returns:
    The projected parameters, with the structure and dtypes of ``theta0``.

  Raises:
    ValueError: for mismatched pytrees or a concrete ``beta`` outside [0, 1].
  """
  _check_same_structure(theta0=theta0, theta_c=theta_c, theta_n=theta_n)
  if isinstance(beta, (int, float)) and not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta must lie in [0, 1]; got {beta}.")

  def project_leaf(t0, tc, tn):
    g_c, g_n = tc - t0, tn - t0
    cs = cosine_similarity(g_c, g_n, eps)
    natural_weight = jnp.where(cs > 0, beta * cs, 0.0)
    return (t0 + (1.0 - beta) * g_c + natural_weight * g_n).astype(t0.dtype)

  return jax.tree.map(project_leaf, theta0, theta_c, theta_n)


def _fresh_copy(tree):
  # New buffers, so that a caller donating its own state to a jitted step
  # never donates one buffer twice.
  return jax.tree.map(jnp.copy, tree)


def init_state(
  params: Params, opt_state: optax.OptState
) -> GradientProjectionState:
  """Starts an interval at ``params``: θ0 = θn = params.

  Args:
    params: the current (certified) parameters.
    opt_state: the current optimizer state; the natural copy starts from it.

  Returns:
    The state, holding fresh copies of both.
  """
  return GradientProjectionState(
    anchor_params=_fresh_copy(params),
    natural_params=_fresh_copy(params),
    natural_opt_state=_fresh_copy(opt_state),
  )


def natural_step(
  state: GradientProjectionState,
  grads: Params,
  optimizer: optax.GradientTransformation,
) -> GradientProjectionState:
  """One optimizer update of the natural copy θn.

  Args:
    state: the interval's state.
    grads: gradients of the clean cross-entropy at ``state.natural_params``,
      computed by the caller on this step's batch (BatchNorm in train mode;
      the running statistics it produces are discarded).
    optimizer: the optimizer of the certified updates.

  Returns:
    The state with θn and its optimizer state advanced by one step.
  """
  updates, opt_state = optimizer.update(
    grads, state.natural_opt_state, state.natural_params
  )
  return state._replace(
    natural_params=optax.apply_updates(state.natural_params, updates),
    natural_opt_state=opt_state,
  )


def finish_interval(
  state: GradientProjectionState,
  certified_params: Params,
  opt_state: optax.OptState,
  beta,
) -> tuple[Params, GradientProjectionState]:
  """Projects at the end of an interval and starts the next one.

  Args:
    state: the interval's state (θ0, θn).
    certified_params: θc, the parameters after the certified updates.
    opt_state: the certified optimizer state now; the certified run keeps
      it, and the next interval's natural copy starts from a copy of it.
    beta: GP weight β ∈ [0, 1].

  Returns:
    ``(params, state)``: the projected parameters (`project`) and a fresh
    state anchored at them. BatchNorm statistics stay those of θc.
  """
  params = project(
    state.anchor_params, certified_params, state.natural_params, beta
  )
  return params, init_state(params, opt_state)
