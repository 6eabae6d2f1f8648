"""Linear relaxations of nonlinearities (CROWN, Zhang et al., NeurIPS 2018).

For pre-activation bounds l <= x <= u, ReLU is enclosed by two lines,
``a_l x + b_l <= relu(x) <= a_u x + b_u``:

* inactive (u <= 0): both lines are 0; active (l >= 0): both are x;
* unstable (l < 0 < u): the upper line is the chord u (x - l) / (u - l), and
  the lower line is α x with any α ∈ [0, 1]. CROWN picks α = 1 if u > -l
  else 0 (the smaller-area triangle); α-CROWN (Xu et al., ICLR 2021) treats
  α as a parameter and optimizes it.
"""

from typing import NamedTuple, Optional

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


def relu_relaxation(lower: jax.Array, upper: jax.Array,
                    alpha: Optional[jax.Array] = None) -> LinearRelaxation:
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
  lower_slope = jnp.where(active, 1.0,
                          jnp.where(is_unstable, jnp.clip(alpha, 0.0, 1.0), 0.0))
  zero = jnp.zeros_like(lower)
  return LinearRelaxation(lower_slope, zero, upper_slope, upper_offset)
