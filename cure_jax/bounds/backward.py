"""The backward linear-bound pass (CROWN) over a `Graph`, and concretization.

Starting from coefficients A on one value (the output specification, or an
identity over a hidden layer's neurons), the pass walks the equations in
reverse, pulling A back through each one with the method's rule table and
collecting a bias (chains of cheap affine equations as one: see
`affine_chains`), until A rests on the input sets. There the linear bound
``<A, x> + bias`` is minimized over the set (concretization):

* box [lo, hi]:      A⁺ lo + A⁻ hi;
* l_p ball (x0, ε):  A x0 - ε ||A||_q, row-wise dual norm (1/p + 1/q = 1);
* ball ∩ domain:     the larger of the two (both are sound lower bounds).

A ``stop`` predicate lets the pass concretize early at any equation's output
with that value's interval instead: IBP with a specification uses it to
fold the specification into the last affine operations only.

Rows are independent, so a pass may take the specification rows a group at
a time (`row_groups`): the results are identical, and on a CPU a group of
about `ROWS_PER_PASS` rows·examples keeps each layer's coefficients near
the last-level cache (CNN7, batch 128, 9 margin rows: one row per pass
runs the back-substitution ~25% faster than all nine at once).
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from cure_jax.bounds import affine_chains
from cure_jax.bounds.first_layer import PendingBall
from cure_jax.bounds.forward import Env, as_interval, is_bounded, read
from cure_jax.bounds.graph import Const, Eqn, Graph, UnsupportedPrimitiveError
from cure_jax.bounds.interval import Interval
from cure_jax.bounds.linear_rules import (
  AFFINE_PRIMITIVES,
  MULTI_OUTPUT_PRIMITIVES,
  bounded_positions,
  inner_product,
)
from cure_jax.bounds.sets import Box, LpBall, lp_norm


def concretize_interval(box: Interval, coeffs: jax.Array) -> jax.Array:
  """min over x in [l, u] of <A, x> = <A⁺, l> + <A⁻, u>: [S, B]."""
  return box.min_inner_product(coeffs)


def concretize_set(leaf: Any, coeffs: jax.Array) -> jax.Array:
  """min of <A, x> over an input set: [S, B]."""
  if isinstance(leaf, Box):
    return concretize_interval(Interval(leaf.lower, leaf.upper), coeffs)
  if not isinstance(leaf, LpBall):
    raise TypeError(f"not an input set: {type(leaf)}")
  box_bound = concretize_interval(leaf.bounding_box(), coeffs)
  if leaf.p == math.inf:
    return box_bound
  flat = coeffs.reshape(coeffs.shape[:2] + (-1,))
  ball_bound = inner_product(
    coeffs, leaf.center
  ) - leaf.radius_per_example() * lp_norm(flat, leaf.dual, axis=-1)
  return (
    ball_bound if leaf.domain is None else jnp.maximum(ball_bound, box_bound)
  )


# A pass's rows·examples at which `row_groups` splits the specification rows.
ROWS_PER_PASS = 128
# The least coefficient bytes (rows·examples × the widest row) a CPU pass
# covers by default; see `default_rows_per_pass`.
MIN_PASS_BYTES = 4 * 2**20


def default_rows_per_pass(row_bytes: int = 0) -> int | None:
  """The rows·examples per pass on a CPU backend, else None (one pass).

  Grouping pays on a CPU, where a pass is limited by the cache; an
  accelerator is kept busiest by the largest kernels (not measured there).
  On a CPU a group holds `ROWS_PER_PASS` rows·examples, or more where rows
  are so narrow (``row_bytes``: one row's coefficients on the pass's widest
  value) that such a group spans less than `MIN_PASS_BYTES`: there each
  extra pass costs more than the cache saves (CROWN-IBP's margins on the
  small CNN at batch 100: groups of 300 rows·examples, 3.8 MB, 13% faster
  than groups of 100, 1.3 MB; CNN7's 200 kB rows keep 128).
  """
  if jax.default_backend() != "cpu":
    return None
  return max(ROWS_PER_PASS, MIN_PASS_BYTES // max(row_bytes, 1))


def row_groups(
  rows: int,
  batch: int,
  rows_per_pass: int = ROWS_PER_PASS,
  max_groups: int | None = None,
) -> list[slice]:
  """Consecutive groups of the S specification rows, ~rows_per_pass·B each.

  Args:
    rows: S, the number of specification rows.
    batch: B, the examples each row covers.
    rows_per_pass: the target number of rows·examples per group.
    max_groups: optional cap on the number of groups (each is a separately
      compiled backward pass).

  Returns:
    Slices covering ``range(rows)`` in order; a single one when
    ``rows · batch <= rows_per_pass``.
  """
  per_group = max(1, rows_per_pass // max(batch, 1))
  if max_groups is not None:
    per_group = max(per_group, -(-rows // max_groups))
  return [slice(i, min(i + per_group, rows)) for i in range(0, rows, per_group)]


def lower_bound(
  graph: Graph,
  env: Env,
  sets: dict[int, Any],
  start: dict[int, jax.Array],
  rules: dict[str, Any],
  alphas: dict[int, jax.Array] | None = None,
  stop: Callable[[Eqn], bool] | None = None,
  groups: Sequence[slice] | None = None,
) -> jax.Array:
  """Lower bound of ``sum_v <start[v], v>`` over the input sets.

  Args:
    graph: the traced function.
    env: the forward environment (intervals of every bounded value).
    sets: input-set leaves by graph input id.
    start: initial coefficients {value id: A [S, *value.shape]}.
    rules: primitive name -> backward rule (`linear_rules.RULES`).
    alphas: optional lower slopes per nonlinear equation output id.
    stop: optional predicate; the pass concretizes the outputs of equations
      for which it holds with their forward intervals.
    groups: optional slices of the S rows (`row_groups`), each bounded by
      its own pass (``alphas``, per row, are sliced alike); the rows'
      results are the same either way.

  Returns:
    [S, B] lower bounds.
  """
  if groups is not None and len(groups) > 1:
    return jnp.concatenate(
      [
        lower_bound(
          graph,
          env,
          sets,
          {v: a[rows] for v, a in start.items()},
          rules,
          {v: a[rows] for v, a in (alphas or {}).items()},
          stop,
        )
        for rows in groups
      ],
      axis=0,
    )
  alphas = alphas or {}
  pending = dict(start)
  some = next(iter(start.values()))
  bias = jnp.zeros(some.shape[:2], some.dtype)

  def stays_alone(eqn: Eqn) -> bool:
    # Early stops, and equations the affine rule refuses (e.g. a bounded
    # divisor), which must meet that rule alone to raise its error.
    if stop is not None and stop(eqn):
      return True
    try:
      bounded_positions(
        eqn,
        [
          read(env, a) if isinstance(a, Const) or a in env else None
          for a in eqn.inputs
        ],
      )
    except UnsupportedPrimitiveError:
      return True
    return False

  eqns = affine_chains.merge(
    graph.eqns,
    lambda a: not isinstance(a, Const) and is_bounded(env.get(a)),
    AFFINE_PRIMITIVES,
    keep_out=tuple(graph.outputs) + tuple(start),
    exclude=stays_alone,
  )
  for eqn in reversed(eqns):
    if not any(v in pending for v in eqn.outputs):
      continue
    if stop is not None and stop(eqn):
      for v in eqn.outputs:
        if v in pending:
          bias = bias + concretize_interval(as_interval(env[v]), pending.pop(v))
      continue
    if len(eqn.outputs) != 1 and eqn.name not in MULTI_OUTPUT_PRIMITIVES:
      raise eqn.unsupported("CROWN", "multiple outputs")
    rule = rules.get(eqn.name)
    if rule is None:
      raise eqn.unsupported("CROWN")
    if len(eqn.outputs) == 1:
      coeffs = pending.pop(eqn.outputs[0])
    else:  # one coefficient array per output, zeros where none is pending
      coeffs = tuple(
        pending.pop(v)
        if v in pending
        else jnp.zeros(some.shape[:1] + as_interval(env[v]).shape, some.dtype)
        for v in eqn.outputs
      )
    args = [read(env, a) for a in eqn.inputs]
    pulled, term = rule(eqn, args, coeffs, alphas.get(eqn.outputs[0]))
    bias = bias + term
    for position, coeffs_in in pulled.items():
      var = eqn.inputs[position]
      pending[var] = pending[var] + coeffs_in if var in pending else coeffs_in
  for var, coeffs in pending.items():
    bias = bias + concretize_set(sets[var], coeffs)
  return bias


def identity_coefficients(
  shape: Sequence[int], dtype, both: bool = True
) -> jax.Array:
  """A = [I; -I] over a value's per-example elements: [2n, B, *shape[1:]].

  The first n rows bound each element from below, the last n from above (as
  lower bounds of its negation); with ``both=False`` only A = I.
  """
  n = math.prod(shape[1:])
  eye = jnp.eye(n, dtype=dtype).reshape((n, 1) + tuple(shape[1:]))
  eye = jnp.broadcast_to(eye, (n,) + tuple(shape))
  return jnp.concatenate([eye, -eye], axis=0) if both else eye


def _split_rows(lower: jax.Array, both: bool):
  """(lower rows, upper rows) of a [2n, B] or [n, B] backward result."""
  if not both:
    return lower, jnp.full_like(lower, jnp.inf)
  n = lower.shape[0] // 2
  return lower[:n], -lower[n:]


def interval_from_identity(
  lower: jax.Array, shape: Sequence[int], both: bool = True
) -> Interval:
  """The `Interval` of a value from the result of `identity_coefficients`."""
  lo, hi = _split_rows(lower, both)
  return Interval(lo.T.reshape(shape), hi.T.reshape(shape))


def spec_coefficients(spec: jax.Array, both: bool = True) -> jax.Array:
  """A = [C; -C] for a specification C [B, S, K]: [2S, B, K] (or just C)."""
  c = jnp.swapaxes(spec, 0, 1)
  return jnp.concatenate([c, -c], axis=0) if both else c


def interval_from_spec(lower: jax.Array, both: bool = True) -> Interval:
  """[B, S] bounds from the result of `spec_coefficients`."""
  lo, hi = _split_rows(lower, both)
  return Interval(lo.T, hi.T)


def is_pending(value) -> bool:
  return isinstance(value, PendingBall)
