"""Input sets: the perturbation regions that bound transforms propagate.

Every set is a registered pytree whose leading axis is the batch, so sets
pass through `jit`, `vmap` and `grad` like arrays. A set stands in place of an
array argument of the function being bounded::

  ibp(model.apply)(variables, LinfBall(x, 0.1, domain=(0., 1.)))

* `Box(lower, upper)`: the explicit box [lower, upper].
* `LpBall(center, eps, p, domain)`: {x : ||x - center||_p <= eps} ∩ domain,
  with `LinfBall`, `L2Ball` and `L1Ball` for p = ∞, 2, 1. For p = ∞ the
  radius may be a scalar, per example [B] or per element (center's shape); for
  finite p it is a scalar or per example. The optional `domain` box (for images
  ``(0., 1.)``) is intersected with the ball.

Bounding uses two facts about a set, both implemented here:
``bounding_box()`` (the tightest box containing the set) and the dual norm
q of p (1/p + 1/q = 1), which gives the exact support function
``max_{||δ||_p <= eps} a·δ = eps·||a||_q``.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.bounds.interval import Interval
from cure_jax.types import Domain


def dual_exponent(p: float) -> float:
  """q with 1/p + 1/q = 1 (q = ∞ for p = 1, q = 1 for p = ∞)."""
  if p == 1:
    return math.inf
  if p == math.inf:
    return 1.0
  return p / (p - 1.0)


def lp_norm(x: jax.Array, p: float, axis) -> jax.Array:
  """||x||_p over ``axis`` (p >= 1, ∞ allowed)."""
  if p == math.inf:
    return jnp.max(jnp.abs(x), axis=axis)
  if p == 1:
    return jnp.sum(jnp.abs(x), axis=axis)
  if p == 2:
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=axis))
  return jnp.sum(jnp.abs(x) ** p, axis=axis) ** (1.0 / p)


def _check_domain(domain: Domain) -> Domain:
  if domain is None:
    return None
  lo, hi = domain
  if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
    raise ValueError(f"domain lower bound {lo} exceeds upper bound {hi}.")
  return (lo, hi)


def _check_nonnegative(name: str, value) -> None:
  """Rejects negative radii when the value is concrete (not traced)."""
  try:
    concrete = np.asarray(value)
  except (
    TypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.ConcretizationTypeError,
  ):
    return  # traced under jit: cannot be checked without a host sync
  if np.any(concrete < 0):
    raise ValueError(f"{name} must be non-negative, got min {concrete.min()}.")


def _broadcast_radius(eps, center: jax.Array, per_element: bool) -> jax.Array:
  """Radius as an array broadcastable against ``center`` ([B, 1, ...] or full)."""
  eps = jnp.asarray(eps, dtype=center.dtype)
  batch_rank_one = (1,) * (center.ndim - 1)
  if eps.ndim == 0:
    return eps.reshape((1,) + batch_rank_one)
  if eps.shape == center.shape[:1]:
    return eps.reshape(center.shape[:1] + batch_rank_one)
  if per_element and eps.shape == center.shape:
    return eps
  allowed = "a scalar, per example [B]" + (
    " or per element (the center's shape)" if per_element else ""
  )
  raise ValueError(
    f"radius of shape {eps.shape} does not fit a center of shape "
    f"{center.shape}: it must be {allowed}."
  )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Box:
  """The box {x : lower <= x <= upper} (elementwise; leading axis = batch)."""

  lower: jax.Array
  upper: jax.Array

  def __post_init__(self):
    if jnp.shape(self.lower) != jnp.shape(self.upper):
      raise ValueError(
        f"Box lower {jnp.shape(self.lower)} and upper "
        f"{jnp.shape(self.upper)} shapes differ."
      )

  @property
  def shape(self):
    return jnp.shape(self.lower)

  @property
  def center(self) -> jax.Array:
    return 0.5 * (self.lower + self.upper)

  def bounding_box(self) -> Interval:
    return Interval(self.lower, self.upper)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LpBall:
  """{x : ||x - center||_p <= eps} ∩ domain, per example.

  Attributes:
    center: [B, ...] points.
    eps: radius, scalar or [B] (or the center's shape when p = ∞).
    p: the norm (static: part of the tree structure), 1 <= p <= ∞.
    domain: optional (lo, hi) box intersected with the ball (static).
  """

  center: jax.Array
  eps: jax.Array
  p: float = dataclasses.field(default=math.inf, metadata=dict(static=True))
  domain: Domain = dataclasses.field(default=None, metadata=dict(static=True))

  def __post_init__(self):
    if not (self.p >= 1):
      raise ValueError(f"p must be >= 1 (or math.inf), got {self.p}.")
    if jnp.ndim(self.center) < 1:
      raise ValueError("center must have a leading batch axis.")
    _check_nonnegative("eps", self.eps)
    _check_domain(self.domain)
    # Validates the radius shape now rather than deep inside a transform.
    _broadcast_radius(
      self.eps, jnp.asarray(self.center), per_element=self.p == math.inf
    )

  @property
  def shape(self):
    return jnp.shape(self.center)

  @property
  def dual(self) -> float:
    return dual_exponent(self.p)

  def radius(self) -> jax.Array:
    """The radius broadcastable against ``center``."""
    return _broadcast_radius(
      self.eps, self.center, per_element=self.p == math.inf
    )

  def radius_per_example(self) -> jax.Array:
    """The radius as [B] (finite p: radii are scalar or per example)."""
    r = self.radius()
    return jnp.broadcast_to(r.reshape(r.shape[0]), self.center.shape[:1])

  def bounding_box(self) -> Interval:
    """The tightest box containing the set: center ± eps, clipped to domain."""
    r = self.radius()
    box = Interval(self.center - r, self.center + r)
    if self.domain is not None:
      lo, hi = self.domain
      box = Interval(jnp.clip(box.lower, lo, hi), jnp.clip(box.upper, lo, hi))
    return box


def LinfBall(center, eps, domain: Domain = None) -> LpBall:  # pylint: disable=invalid-name
  """The l∞ ball (a box) of radius ``eps`` around ``center``, ∩ ``domain``."""
  return LpBall(center, eps, math.inf, domain)


def L2Ball(center, eps, domain: Domain = None) -> LpBall:  # pylint: disable=invalid-name
  """The l2 ball of radius ``eps`` around ``center``, ∩ ``domain``."""
  return LpBall(center, eps, 2.0, domain)


def L1Ball(center, eps, domain: Domain = None) -> LpBall:  # pylint: disable=invalid-name
  """The l1 ball of radius ``eps`` around ``center``, ∩ ``domain``."""
  return LpBall(center, eps, 1.0, domain)


InputSet = Box | LpBall


def is_input_set(x) -> bool:
  return isinstance(x, (Box, LpBall))
