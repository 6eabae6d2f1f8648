"""Sound bounds on the sampled source coordinates over a parameter box.

For every output pixel p, eq. (1) of `warps`,

  q = (1/s) · Sh(−m) · R(−φ) · (p − t),

is bounded over the box θ ∈ [θ_lo, θ_hi] by evaluating it step by step on
intervals (in the style of DeepG, Balunović et al., 2019, and certified
geometric training, Yang et al., ICLR 2023):

* p − t: exact, [p − t_hi, p − t_lo].
* R(−φ) on a box of points: for fixed φ both coordinates are linear in the
  point, so their extremes over the box are at its 4 corners; for a fixed
  corner (a, b), a·cos φ + b·sin φ = ρ·cos(φ − γ), with ρ = |(a, b)| and
  γ = atan2(b, a), is extremal at the interval's endpoints or at the
  stationary angles γ + 2kπ (value ρ) and γ + π + 2kπ (value −ρ) inside it.
  So the range is exact for each coordinate. A single angle (φ_lo = φ_hi)
  takes the concrete formula on the interval.
* Sh(−m): x − m·y by interval arithmetic; y unchanged.
* 1/s: division by s ∈ [s_lo, s_hi] ⊂ (0, ∞), extremes at the endpoints.

Each step is exact for its input box; coupling between the coordinates is
lost between steps (a box stands in for the set), which splitting the range
into sub-boxes controls. Steps with single-operation formulas use the same
floating-point operations as `warps.source_coordinates`, whose rounding
is monotone, so at a degenerate range they reproduce it bit for bit.
"""

import jax
import jax.numpy as jnp

from cure_jax.bounds import Interval
from cure_jax.perturbations.parameters import ParameterBox
from cure_jax.perturbations.warps import DEGREE, centered_grid

_TWO_PI = 2.0 * jnp.pi


def _hull(*values: jax.Array) -> Interval:
  """The smallest interval holding every value (elementwise)."""
  stacked = jnp.stack(jnp.broadcast_arrays(*values))
  return Interval(jnp.min(stacked, axis=0), jnp.max(stacked, axis=0))


def _union(*intervals: Interval) -> Interval:
  """The smallest interval holding every interval (elementwise)."""
  return Interval(
    _hull(*[i.lower for i in intervals]).lower,
    _hull(*[i.upper for i in intervals]).upper,
  )


def _add(a: Interval, b: Interval) -> Interval:
  """{x + y : x ∈ a, y ∈ b}."""
  return Interval(a.lower + b.lower, a.upper + b.upper)


def scale_interval(factor: jax.Array, interval: Interval) -> Interval:
  """{a·x : x ∈ interval} for a point a (either sign)."""
  return _hull(factor * interval.lower, factor * interval.upper)


def multiply(a: Interval, b: Interval) -> Interval:
  """{x·y : x ∈ a, y ∈ b}: the hull of the four endpoint products."""
  return _hull(
    a.lower * b.lower, a.lower * b.upper, a.upper * b.lower, a.upper * b.upper
  )


def subtract(a: Interval, b: Interval) -> Interval:
  """{x − y : x ∈ a, y ∈ b}."""
  return Interval(a.lower - b.upper, a.upper - b.lower)


def _contains_angle(
  start: jax.Array, lo: jax.Array, hi: jax.Array
) -> jax.Array:
  """Whether start + 2kπ ∈ [lo, hi] for some integer k."""
  return jnp.ceil((lo - start) / _TWO_PI) <= jnp.floor((hi - start) / _TWO_PI)


def _cosine_range(
  a: jax.Array, b: jax.Array, lo: jax.Array, hi: jax.Array
) -> Interval:
  """Exact range of a·cos φ + b·sin φ over φ ∈ [lo, hi] (radians)."""
  at_lo = a * jnp.cos(lo) + b * jnp.sin(lo)
  at_hi = a * jnp.cos(hi) + b * jnp.sin(hi)
  rho, gamma = jnp.hypot(a, b), jnp.arctan2(b, a)
  upper = jnp.where(
    _contains_angle(gamma, lo, hi), rho, jnp.maximum(at_lo, at_hi)
  )
  lower = jnp.where(
    _contains_angle(gamma + jnp.pi, lo, hi), -rho, jnp.minimum(at_lo, at_hi)
  )
  return Interval(lower, upper)


def rotate_back(
  x: Interval, y: Interval, angle: Interval
) -> tuple[Interval, Interval]:
  """Bounds of R(−φ)·(x, y) = (x cos φ + y sin φ, y cos φ − x sin φ) over the
  box x × y and the angles φ (radians)."""
  corners = [(a, b) for a in (x.lower, x.upper) for b in (y.lower, y.upper)]
  new_x = _union(
    *[_cosine_range(a, b, angle.lower, angle.upper) for a, b in corners]
  )
  new_y = _union(
    *[_cosine_range(b, -a, angle.lower, angle.upper) for a, b in corners]
  )
  # A single angle: the concrete formula on intervals (exact, and bitwise
  # the transform's arithmetic at a point).
  cos, sin = jnp.cos(angle.lower), jnp.sin(angle.lower)
  point_x = _add(scale_interval(cos, x), scale_interval(sin, y))
  point_y = subtract(scale_interval(cos, y), scale_interval(sin, x))
  single = angle.lower == angle.upper
  pick = lambda p, r: Interval(
    jnp.where(single, p.lower, r.lower), jnp.where(single, p.upper, r.upper)
  )
  return pick(point_x, new_x), pick(point_y, new_y)


def divide_positive(a: Interval, divisor: Interval) -> Interval:
  """{x / s : x ∈ a, s ∈ divisor} for a divisor range inside (0, ∞)."""
  return _hull(
    a.lower / divisor.lower,
    a.lower / divisor.upper,
    a.upper / divisor.lower,
    a.upper / divisor.upper,
  )


def source_coordinate_bounds(
  box: ParameterBox, height: int, width: int
) -> tuple[Interval, Interval]:
  """Bounds (u, v) [..., H, W] on the column and row each output pixel samples,
  over every parameter in `box` (scalar leaves, or broadcastable against
  [H, W], e.g. [R, 1, 1] for R boxes)."""
  lo, hi = box
  x, y = centered_grid(height, width)
  point = lambda v: Interval(v, v)
  x = subtract(point(x), Interval(lo.translation_x, hi.translation_x))
  y = subtract(point(y), Interval(lo.translation_y, hi.translation_y))
  x, y = rotate_back(x, y, Interval(lo.rotation * DEGREE, hi.rotation * DEGREE))
  x = subtract(x, multiply(Interval(lo.shearing, hi.shearing), y))
  scaling = Interval(lo.scaling, hi.scaling)
  x, y = divide_positive(x, scaling), divide_positive(y, scaling)
  shift_u, shift_v = (width - 1) / 2.0, (height - 1) / 2.0
  return (
    Interval(x.lower + shift_u, x.upper + shift_u),
    Interval(y.lower + shift_v, y.upper + shift_v),
  )
