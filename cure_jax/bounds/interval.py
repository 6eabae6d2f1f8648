"""`Interval`: elementwise lower and upper bounds, as a pytree.

Bound transforms return an `Interval` per output leaf, so bounds flow through
`jax.tree`, `jit`, `vmap` and `grad` like any other pytree of arrays.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Interval(NamedTuple):
  """Elementwise bounds ``lower <= f(x) <= upper`` (a pytree of two arrays)."""

  lower: jax.Array
  upper: jax.Array

  @property
  def center(self) -> jax.Array:
    return 0.5 * (self.upper + self.lower)

  @property
  def radius(self) -> jax.Array:
    return 0.5 * (self.upper - self.lower)

  @property
  def shape(self):
    return jnp.shape(self.lower)

  @classmethod
  def from_center_radius(cls, center, radius) -> "Interval":
    return cls(center - radius, center + radius)

  def intersect(self, other: "Interval") -> "Interval":
    """The tighter of two sound bounds of the same quantity."""
    return Interval(
      jnp.maximum(self.lower, other.lower), jnp.minimum(self.upper, other.upper)
    )

  def min_inner_product(self, coeffs: jax.Array) -> jax.Array:
    """min over x in [l, u] of <A, x> = <A⁺, l> + <A⁻, u>, per row.

    ``coeffs`` is [S, B, ...] (S rows, then this interval's shape); the
    result [S, B]. A zero coefficient ignores its element, even an infinite
    end (log at 0).
    """
    terms = jnp.where(coeffs > 0, coeffs * self.lower, 0.0) + jnp.where(
      coeffs < 0, coeffs * self.upper, 0.0
    )
    return terms.reshape(terms.shape[:2] + (-1,)).sum(-1)

  def contains(self, x, atol: float = 0.0) -> jax.Array:
    """Whether ``x`` lies inside the bounds, up to ``atol`` (elementwise)."""
    return (x >= self.lower - atol) & (x <= self.upper + atol)
