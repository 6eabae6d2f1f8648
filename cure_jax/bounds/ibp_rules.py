"""IBP rules, one per primitive (interval bound propagation).

Gowal et al., "On the Effectiveness of Interval Bound Propagation for
Training Verifiably Robust Models" (2018). Each rule maps the operands of one
equation — concrete arrays or `Interval`s — to the `Interval` of its output.

* Affine operations use the center/radius form: for y = W x + b with
  x ∈ c ± r, y ∈ (W c + b) ± |W| r (exact for a single affine map of a box).
* Operations monotone non-decreasing in every bounded operand (reshape,
  pooling, ReLU, max, sums, …) map lower bounds to lower bounds and upper
  bounds to upper bounds.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp

from cure_jax.bounds import midpoint
from cure_jax.bounds.graph import Eqn, evaluate_concrete
from cure_jax.bounds.interval import Interval

IbpRule = Callable[[Eqn, Sequence[Any]], list[Any]]


def is_bound(x) -> bool:
  return isinstance(x, Interval)


def _bounded_positions(args) -> list[int]:
  return [i for i, a in enumerate(args) if is_bound(a)]


def monotone(eqn: Eqn, args: Sequence[Any]) -> list[Interval]:
  """f non-decreasing in each bounded operand: [f(lowers), f(uppers)]."""
  lows = [a.lower if is_bound(a) else a for a in args]
  highs = [a.upper if is_bound(a) else a for a in args]
  return [
    Interval(lo, hi)
    for lo, hi in zip(
      evaluate_concrete(eqn, lows), evaluate_concrete(eqn, highs)
    )
  ]


def neg(eqn: Eqn, args) -> list[Interval]:
  del eqn
  (x,) = args
  return [Interval(-x.upper, -x.lower)]


def sub(eqn: Eqn, args) -> list[Interval]:
  """x - y = x + (-y): the upper bound of y lowers the result."""
  del eqn
  x, y = args
  x = x if is_bound(x) else Interval(x, x)
  y = y if is_bound(y) else Interval(y, y)
  return [Interval(x.lower - y.upper, x.upper - y.lower)]


def _scale(x: Interval, k) -> Interval:
  """k ⊙ x for a concrete k, in center/radius form: k c ± |k| r."""
  return Interval.from_center_radius(x.center * k, x.radius * jnp.abs(k))


def mul(eqn: Eqn, args) -> list[Interval]:
  """Product; with two bounded factors the min/max of the four corners."""
  del eqn
  x, y = args
  if is_bound(x) and is_bound(y):
    corners = jnp.stack(
      [
        x.lower * y.lower,
        x.lower * y.upper,
        x.upper * y.lower,
        x.upper * y.upper,
      ]
    )
    return [Interval(corners.min(0), corners.max(0))]
  bound, k = (x, y) if is_bound(x) else (y, x)
  return [_scale(bound, k)]


def div(eqn: Eqn, args) -> list[Interval]:
  x, y = args
  if is_bound(y):
    raise eqn.unsupported("IBP", "division by a bounded value")
  return [_scale(x, 1.0 / y)]


def bilinear(eqn: Eqn, args) -> list[Interval]:
  """dot_general / conv with one bounded operand: W c ± |W| r."""
  positions = _bounded_positions(args)
  if len(positions) != 1:
    raise eqn.unsupported("IBP", "both operands are bounded")
  (i,) = positions
  center_args = list(args)
  radius_args = [a if is_bound(a) else jnp.abs(a) for a in args]
  center_args[i], radius_args[i] = args[i].center, args[i].radius
  (center,) = evaluate_concrete(eqn, center_args)
  (radius,) = evaluate_concrete(eqn, radius_args)
  return [Interval.from_center_radius(center, radius)]


def abs_rule(eqn: Eqn, args) -> list[Interval]:
  del eqn
  (x,) = args
  lower = jnp.where(x.lower > 0, x.lower, jnp.where(x.upper < 0, -x.upper, 0.0))
  return [Interval(lower, jnp.maximum(jnp.abs(x.lower), jnp.abs(x.upper)))]


def integer_pow(eqn: Eqn, args) -> list[Interval]:
  """x^n (and square, n = 2): increasing for odd n; for even n, |x|^n of
  `abs_rule`'s interval."""
  n = 2 if eqn.name == "square" else eqn.params["y"]
  if n < 0:
    raise eqn.unsupported("IBP", f"a negative exponent ({n})")
  if n % 2:
    return monotone(eqn, args)
  (magnitude,) = abs_rule(eqn, args)
  return monotone(eqn, [magnitude])


def _as_bound(x) -> Interval:
  return x if is_bound(x) else Interval(x, x)


def compare(eqn: Eqn, args) -> list[Interval]:
  """x >= y (or >, <=, <) as a boolean interval [certainly, possibly].

  For ``>=``: certainly true where l_x >= u_y, possibly where u_x >= l_y.
  False < True, so the interval is monotone like any other: a selector, or
  converted to a number (0 or 1) by ``convert_element_type``.
  """
  x, y = (_as_bound(a) for a in args)
  compare_at = lambda a, b: evaluate_concrete(eqn, [a, b])[0]
  if eqn.name in ("ge", "gt"):
    return [
      Interval(compare_at(x.lower, y.upper), compare_at(x.upper, y.lower))
    ]
  return [Interval(compare_at(x.upper, y.lower), compare_at(x.lower, y.upper))]


def select_n(eqn: Eqn, args) -> list[Interval]:
  """cases[which]; with an uncertain selector, the hull of both cases.

  A selector bounded by a comparison (``jnp.where(x > 0, x, a * x)``: leaky
  ReLU, ELU, any piecewise function) picks its case where the comparison is
  certain and covers both elsewhere.
  """
  which, *cases = args
  if not is_bound(which):
    return monotone(eqn, args)
  if len(cases) != 2 or which.lower.dtype != jnp.bool_:
    raise eqn.unsupported("IBP", "a bounded selector must be a comparison")
  if_false, if_true = (_as_bound(c) for c in cases)
  certain, possible = which.lower, which.upper

  def pick(a, b, hull):
    return jnp.where(certain, b, jnp.where(possible, hull(a, b), a))

  return [
    Interval(
      pick(if_false.lower, if_true.lower, jnp.minimum),
      pick(if_false.upper, if_true.upper, jnp.maximum),
    )
  ]


# Structural and monotone primitives: exact (or tight) under `monotone`.
MONOTONE_PRIMITIVES = (
  "add",
  "add_any",
  "max",
  "min",
  "reshape",
  "transpose",
  "broadcast_in_dim",
  "squeeze",
  "expand_dims",
  "slice",
  "dynamic_slice",
  "concatenate",
  "stack",
  "split",
  "pad",
  "reduce_sum",
  "reduce_max",
  "reduce_min",
  "reduce_window_sum",
  "reduce_window_max",
  "reduce_window_min",
  "convert_element_type",
  "copy",
  "copy_p",
  "rev",
  "cumsum",
  "gather",
  "clamp",
  "exp",
  "exp2",
  "expm1",
  "log",
  "log1p",
  "tanh",
  "logistic",
  "sqrt",
  "cbrt",
  "erf",
  "atan",
  "asinh",
  "sinh",
  "reduce_precision",
  "leaky_relu",  # `leaky_relu.LeakyRelu`, increasing for 0 <= k <= 1
)

RULES: dict[str, IbpRule] = {name: monotone for name in MONOTONE_PRIMITIVES}
RULES.update(
  {
    "neg": neg,
    "sub": sub,
    "mul": mul,
    "div": div,
    "abs": abs_rule,
    "integer_pow": integer_pow,
    "square": integer_pow,
    "select_n": select_n,
    "ge": compare,
    "gt": compare,
    "le": compare,
    "lt": compare,
    "dot_general": bilinear,
    "conv_general_dilated": bilinear,
    midpoint.midpoint_p.name: midpoint.ibp_rule,
  }
)
