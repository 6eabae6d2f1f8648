"""Linear relaxations of nonlinearities (CROWN, Zhang et al., NeurIPS 2018).

ReLU first; smooth monotone activations (tanh, sigmoid, exp, log, ...) at the
end of the file.

For pre-activation bounds l <= x <= u, ReLU is enclosed by two lines,
``a_l x + b_l <= relu(x) <= a_u x + b_u``:

* inactive (u <= 0): both lines are 0; active (l >= 0): both are x;
* unstable (l < 0 < u): the upper line is the chord u (x - l) / (u - l), and
  the lower line is α x with any α ∈ [0, 1]. CROWN picks α = 1 if u > -l
  else 0 (the smaller-area triangle); α-CROWN (Xu et al., ICLR 2021) treats
  α as a parameter and optimizes it.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


class LinearRelaxation(NamedTuple):
  """Elementwise ``lower_slope·x + lower_offset <= f(x) <= upper_slope·x + upper_offset``."""

  lower_slope: jax.Array
  lower_offset: jax.Array
  upper_slope: jax.Array
  upper_offset: jax.Array


def unstable(lower: jax.Array, upper: jax.Array) -> jax.Array:
  return (lower < 0) & (upper > 0)


def crown_lower_slope(lower: jax.Array, upper: jax.Array) -> jax.Array:
  """CROWN's adaptive lower slope: 1 on active or u > -l, else 0."""
  return (upper > -lower).astype(lower.dtype)


def relu_relaxation(
  lower: jax.Array, upper: jax.Array, alpha: jax.Array | None = None
) -> LinearRelaxation:
  """The ReLU triangle relaxation.

  Args:
    lower, upper: pre-activation bounds.
    alpha: optional lower slopes for unstable neurons (clipped to [0, 1]);
      any shape broadcasting against ``lower``. Default: CROWN's choice.

  Returns:
    The relaxation; slopes broadcast against ``alpha`` when given.
  """
  is_unstable = unstable(lower, upper)
  active = lower >= 0
  width = jnp.where(is_unstable, upper - lower, 1.0)
  chord = jnp.where(is_unstable, upper / width, 0.0)
  upper_slope = jnp.where(active, 1.0, chord)
  upper_offset = jnp.where(is_unstable, -chord * lower, 0.0)
  if alpha is None:
    alpha = crown_lower_slope(lower, upper)
  lower_slope = jnp.where(
    active, 1.0, jnp.where(is_unstable, jnp.clip(alpha, 0.0, 1.0), 0.0)
  )
  zero = jnp.zeros_like(lower)
  return LinearRelaxation(lower_slope, zero, upper_slope, upper_offset)


def leaky_relu_relaxation(
  lower: jax.Array,
  upper: jax.Array,
  negative_slope: float,
  alpha: jax.Array | None = None,
) -> LinearRelaxation:
  """leaky_relu(x) = k x + (1 - k) relu(x), 0 <= k <= 1: the ReLU's lines,
  scaled by 1 - k, plus k x (the lower lines still pass through 0)."""
  k = negative_slope
  relax = relu_relaxation(lower, upper, alpha)
  return LinearRelaxation(
    k + (1 - k) * relax.lower_slope,
    relax.lower_offset,
    k + (1 - k) * relax.upper_slope,
    (1 - k) * relax.upper_offset,
  )


# ------------------------------------------------ smooth monotone activations
#
# An increasing, twice-differentiable f on [l, u] (CROWN's general
# activations, Zhang et al. 2018; the crossing case as DeepPoly's S-shaped
# rule, Singh et al., POPL 2019):
#
# * f convex on [l, u]:  tangent at m = (l + u)/2  <=  f  <=  chord;
# * f concave on [l, u]: chord  <=  f  <=  tangent at m;
# * otherwise: with λ = min of f' over [l, u], g(x) = f(x) - λx is
#   non-decreasing there, so  f(l) + λ(x - l)  <=  f  <=  f(u) + λ(x - u).
#
# A zero-width interval, or a non-finite value or slope (log at 0, say),
# falls back to the interval lines f(l) <= f <= f(u), which need nothing but
# monotonicity.

# The curvature of each supported primitive, as the sign pattern of f'':
# "convex" everywhere, "concave" on its domain, "s_shaped" (convex below 0,
# concave above, so f' peaks at 0) or "reverse_s" (concave below 0, convex
# above, so f' is least at 0).
SMOOTH_CURVATURE = {
  "exp": "convex",
  "exp2": "convex",
  "expm1": "convex",
  "log": "concave",
  "log1p": "concave",
  "sqrt": "concave",
  "tanh": "s_shaped",
  "logistic": "s_shaped",
  "erf": "s_shaped",
  "atan": "s_shaped",
  "asinh": "s_shaped",
  "cbrt": "s_shaped",
  "sinh": "reverse_s",
}


def curvature(name: str, params) -> str:
  """The curvature of a smooth primitive; integer_pow's by its exponent n
  (square: n = 2).

  x^n for odd n >= 3 is increasing and "reverse_s" (f' = n x^(n−1) is least
  at 0); for even n (and the linear or constant n = 1, 0) it is "convex",
  which needs no monotonicity: the tangent below and the chord above enclose
  any convex function. Negative n (IBP refuses it) raises a ValueError.
  """
  if name not in ("integer_pow", "square"):
    return SMOOTH_CURVATURE[name]
  n = 2 if name == "square" else params["y"]
  if n < 0:
    raise ValueError(f"integer_pow with a negative exponent ({n})")
  return "reverse_s" if n % 2 and n >= 3 else "convex"


def smooth_relaxation(
  fn,
  derivative,
  curvature: str,
  lower: jax.Array,
  upper: jax.Array,
  fallback=None,
) -> LinearRelaxation:
  """Lines enclosing an elementwise ``fn`` on [lower, upper].

  ``fn`` must be increasing, or convex everywhere: tangent and chord
  enclose any convex function, and the fallback is then given.

  Args:
    fn, derivative: the function and its derivative, elementwise.
    curvature: one of the values of `SMOOTH_CURVATURE`.
    lower, upper: input bounds.
    fallback: optional (low, high) bounds of fn on [lower, upper], the
      constant lines where the others are unusable; default
      (fn(lower), fn(upper)), right for an increasing fn.
  """
  f_lower, f_upper = fn(lower), fn(upper)
  fallback_lower, fallback_upper = (
    (f_lower, f_upper) if fallback is None else fallback
  )
  width = upper - lower
  chord = (f_upper - f_lower) / jnp.where(width > 0, width, 1.0)
  chord_offset = f_lower - chord * lower
  middle = 0.5 * (lower + upper)
  tangent = derivative(middle)
  tangent_offset = fn(middle) - tangent * middle
  least_slope = jnp.zeros_like(lower)  # used by the mixed case only
  if curvature == "convex":
    convex, concave = jnp.ones_like(lower, bool), jnp.zeros_like(lower, bool)
  elif curvature == "concave":
    convex, concave = jnp.zeros_like(lower, bool), jnp.ones_like(lower, bool)
  elif curvature == "s_shaped":
    convex, concave = upper <= 0, lower >= 0
    least_slope = jnp.minimum(derivative(lower), derivative(upper))
  elif curvature == "reverse_s":
    convex, concave = lower >= 0, upper <= 0
    least_slope = derivative(jnp.clip(0.0, lower, upper))
  else:
    raise ValueError(f"unknown curvature {curvature!r}")
  mixed_lower_offset = f_lower - least_slope * lower
  mixed_upper_offset = f_upper - least_slope * upper
  lower_slope = jnp.where(
    convex, tangent, jnp.where(concave, chord, least_slope)
  )
  lower_offset = jnp.where(
    convex, tangent_offset, jnp.where(concave, chord_offset, mixed_lower_offset)
  )
  upper_slope = jnp.where(
    convex, chord, jnp.where(concave, tangent, least_slope)
  )
  upper_offset = jnp.where(
    convex, chord_offset, jnp.where(concave, tangent_offset, mixed_upper_offset)
  )
  lines = (lower_slope, lower_offset, upper_slope, upper_offset)
  usable = (upper > lower) & functools.reduce(
    jnp.logical_and, [jnp.isfinite(v) for v in lines]
  )
  zero = jnp.zeros_like(lower)
  return LinearRelaxation(
    jnp.where(usable, lower_slope, zero),
    jnp.where(usable, lower_offset, fallback_lower),
    jnp.where(usable, upper_slope, zero),
    jnp.where(usable, upper_offset, fallback_upper),
  )
