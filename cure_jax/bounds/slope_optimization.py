"""Gradient ascent on CROWN's free relaxation parameters (α-CROWN).

Xu et al. (ICLR 2021): every lower slope α ∈ [0, 1] of an unstable ReLU-like
unit (and the mix λ ∈ [0, 1] of McCormick's planes of a product) gives a
sound linear bound, so the bound of a specification is a function of the
slopes to maximize. With ``all_layers``, each backward pass — the output's
and every intermediate layer's — has its own slopes for the units before
it: tighter intermediate bounds tighten the relaxations the output's pass
uses, and the gradient of the output's bound reaches every slope through
them.

The loop (`maximize`) runs ``steps`` steps of an optax optimizer on the sum
of the output's lower bounds, clipping the slopes to [0, 1] after each step,
and returns the best bound seen per row (starting from a reference bound,
CROWN's), so the result is never looser than the reference and every bound
seen is sound whatever the slopes are.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from cure_jax.bounds.graph import Const, Graph
from cure_jax.bounds.interval import Interval
from cure_jax.bounds.layer_bounds import RowPlan
from cure_jax.bounds.relaxations import crown_lower_slope

# α,β-CROWN's incomplete verifier: Adam, lr 0.1 decayed by 0.98 per step.
DEFAULT_STEPS = 100
DEFAULT_LEARNING_RATE = 0.1
DEFAULT_DECAY = 0.98


def default_optimizer() -> optax.GradientTransformation:
  """Adam with learning rate 0.1 · 0.98^step (α,β-CROWN's defaults)."""
  return optax.adam(
    optax.exponential_decay(DEFAULT_LEARNING_RATE, 1, DEFAULT_DECAY)
  )


def ancestors(graph: Graph, atom: int) -> set:
  """Ids of the values ``atom`` is computed from (itself included)."""
  found = {atom}
  for eqn in reversed(graph.eqns):
    if any(v in found for v in eqn.outputs):
      found.update(a for a in eqn.inputs if not isinstance(a, Const))
  return found


def initial_slopes(
  units: dict[int, Interval], products: dict[int, tuple], leading: tuple
) -> dict[int, jax.Array]:
  """CROWN's slopes (λ = 1 for products) broadcast to ``leading`` + shape.

  Args:
    units: ReLU-like output id -> its ReLU pre-activation interval.
    products: product output id -> shape.
    leading: the slopes' leading axes (rows; (1,) when shared).
  """
  slopes = {
    v: jnp.broadcast_to(
      crown_lower_slope(box.lower, box.upper), leading + box.shape
    )
    for v, box in units.items()
  }
  for v, shape in products.items():
    dtype = next(iter(units.values())).lower.dtype if units else jnp.float32
    slopes[v] = jnp.ones(leading + shape, dtype)
  return slopes


def layer_slopes(
  graph: Graph,
  plans: dict[int, RowPlan],
  units: dict[int, Interval],
  products: dict[int, tuple],
  shared: bool,
) -> dict[int, dict[int, jax.Array]]:
  """Slopes of every intermediate pass: value -> {earlier unit: slopes}.

  Per row, [chunks, 2R, *unit shape] (the plan's layout); shared by the
  pass's rows, [1, *unit shape].
  """
  slopes = {}
  for atom, plan in plans.items():
    if plan.chunks == 0:
      continue
    before = ancestors(graph, atom)
    leading = (1,) if shared else (plan.chunks, 2 * plan.rows_per_chunk)
    slopes[atom] = initial_slopes(
      {v: b for v, b in units.items() if v in before},
      {v: s for v, s in products.items() if v in before},
      leading,
    )
  return {atom: s for atom, s in slopes.items() if s}


def maximize(
  bound: Callable[[dict], jax.Array],
  slopes: dict,
  best: jax.Array,
  steps: int,
  optimizer: optax.GradientTransformation,
  unroll: int | bool = 1,
  done: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
  """The best of ``best`` and ``bound(slopes)`` over the optimizer's iterates.

  Args:
    bound: slopes -> lower bounds [S, B] (sound for any slopes in [0, 1]).
    slopes: initial slopes (a pytree).
    best: [S, B] a sound reference bound (kept where it is better).
    steps: optimizer steps.
    optimizer: minimizes -sum(bound).
    unroll: ``lax.scan``'s unrolling when ``done`` is None.
    done: optional best -> bool; the loop (then a ``while_loop``) stops
      once it holds (e.g. every specification verified).

  Returns:
    [S, B] best lower bounds.
  """
  if not jax.tree.leaves(slopes) or not steps:
    return best
  slopes = jax.lax.stop_gradient(slopes)

  def negated_sum(s):
    lower = bound(s)
    return -lower.sum(), lower

  def step(carry):
    # One bound evaluation per step: its value updates the best bound seen
    # (at the current slopes), its gradient the slopes.
    slopes, opt_state, best = carry
    (_, lower), grads = jax.value_and_grad(negated_sum, has_aux=True)(slopes)
    # A relaxation at the edge of its domain (sqrt or log at 0) has an
    # infinite derivative: such a gradient entry moves nothing.
    grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grads)
    best = jnp.fmax(best, lower)  # a NaN bound is no bound
    updates, opt_state = optimizer.update(grads, opt_state, slopes)
    slopes = jax.tree.map(
      lambda a: jnp.clip(a, 0.0, 1.0), optax.apply_updates(slopes, updates)
    )
    return slopes, opt_state, best

  carry = (slopes, optimizer.init(slopes), best)
  if done is None:
    # Rolled by default: unrolled, the 20 steps of α-CROWN on the small
    # MNIST CNN (batch 8) ran 2.7–2.9× slower on XLA:CPU and compiled 5–7×
    # longer (docs/performance.md).
    carry, _ = jax.lax.scan(
      lambda c, _: (step(c), None), carry, None, length=steps, unroll=unroll
    )
    slopes, _, best = carry
    return jnp.fmax(best, bound(slopes))
  # Stops before evaluating the slopes of the last update once done.
  _, (_, _, best) = jax.lax.while_loop(
    lambda ic: (ic[0] < steps) & ~done(ic[1][2]),
    lambda ic: (ic[0] + 1, step(ic[1])),
    (jnp.zeros((), jnp.int32), carry),
  )
  return best
