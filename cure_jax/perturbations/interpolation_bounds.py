"""Sound bounds on bilinear interpolation over a box of source coordinates.

Bilinear interpolation at (u, v) is a convex combination of the pixels
(⌊v⌋ + i, ⌊u⌋ + j), i, j ∈ {0, 1}, and a neighbour gets a positive weight
only if it lies in [⌊u⌋, ⌈u⌉] × [⌊v⌋, ⌈v⌉]. So for every (u, v) in the box
[u_lo, u_hi] × [v_lo, v_hi], the value lies between the min and the max of
the image over the integer window [⌊u_lo⌋, ⌈u_hi⌉] × [⌊v_lo⌋, ⌈v_hi⌉], with 0
among the values when the window leaves the image (zero padding).

Snapping. An endpoint a hair past an integer (u_lo = 2.99999 after rounding)
would add a whole column for a vanishing weight. The window is therefore
[⌊u_lo + τ⌋, ⌈u_hi − τ⌉] (τ = `SNAP_TOLERANCE` pixels), which every u of the
box is within d_u = max(0, k_lo − u_lo, u_hi − k_hi) <= τ of; interpolation is
L-Lipschitz in each coordinate, with L the spread of the image's values and
0, so the bounds widen by L·(d_u + d_v) — nothing where no snapping happened.

Mean value. The window's extrema do not shrink with the box: a box of
width 0.01 around an integer coordinate still spans a 3-pixel window. So the
bounds are intersected with I(c) ± (high − low)·(δ_u + δ_v), c the box's
centre and δ its half-widths (`_mean_value_bounds`): interpolation is
piecewise bilinear, each partial derivative a difference of two window
values. Splitting a parameter range into k pieces then narrows the bounds
about k-fold, as splitting should.

Window extrema come from 2-D sparse tables (range-minimum queries): level
(a, b) holds the min (max) over the 2^a × 2^b window at each pixel, so any
window is the union of 4 overlapping table windows — O(1) gathers per output
pixel whatever the window size, computed once per image.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.bounds import Interval
from cure_jax.perturbations.warps import bilinear_sample

SNAP_TOLERANCE = 1e-4
# Float error of interpolating at the centre and of the half-widths (values
# in [0, 1], coordinates below ~10^3 pixels).
MEAN_VALUE_TOLERANCE = 1e-5


class WindowTables(NamedTuple):
  """Sparse tables of a batch of images (a pytree).

  Attributes:
    minima: [B, Lr, Lc, H, W, C]; minima[n, a, b, r, c] = min of image n over
      rows [r, r + 2^a) and columns [c, c + 2^b) (cut at the border).
    maxima: the same with max.
    lipschitz: [B, C], max(0, max x) − min(0, min x) per channel: bounds how
      fast bilinear interpolation (zero padding) changes per pixel of
      displacement along either axis.
  """

  minima: jax.Array
  maxima: jax.Array
  lipschitz: jax.Array


def _levels(size: int) -> int:
  """Table levels for a side of ``size`` pixels: ⌊log2 size⌋ + 1."""
  return int(np.floor(np.log2(size))) + 1


def _double(levels: jax.Array, axis: int, count: int, op) -> jax.Array:
  """Stacks ``count`` doubling levels of ``levels`` along ``axis``.

  Level a + 1 at i combines level a at i and at min(i + 2^a, n − 1); the
  clamped index lies inside the window it stands for, so border windows are
  the cut ones.
  """
  size = levels.shape[axis]
  out = [levels]
  for a in range(count - 1):
    index = np.minimum(np.arange(size) + 2**a, size - 1)
    out.append(op(out[-1], jnp.take(out[-1], index, axis=axis)))
  return jnp.stack(out)


def window_tables(images: jax.Array) -> WindowTables:
  """Sparse tables of [B, H, W, C]: (⌊log2 H⌋ + 1)·(⌊log2 W⌋ + 1) levels."""
  height, width = images.shape[1:3]

  def tables(op):
    rows = _double(images, 1, _levels(height), op)  # [Lr, B, H, W, C]
    both = jax.vmap(lambda t: _double(t, 2, _levels(width), op))(rows)
    return jnp.moveaxis(both, 2, 0)  # [B, Lr, Lc, H, W, C]

  spread = jnp.maximum(jnp.max(images, axis=(1, 2)), 0.0) - jnp.minimum(
    jnp.min(images, axis=(1, 2)), 0.0
  )
  return WindowTables(tables(jnp.minimum), tables(jnp.maximum), spread)


def _snap(interval: Interval):
  """Integer window [k_lo, k_hi] of a coordinate range, and the gap d."""
  k_lo = jnp.floor(interval.lower + SNAP_TOLERANCE)
  k_hi = jnp.maximum(jnp.ceil(interval.upper - SNAP_TOLERANCE), k_lo)
  gap = jnp.maximum(
    jnp.maximum(k_lo - interval.lower, interval.upper - k_hi), 0.0
  )
  return k_lo.astype(jnp.int32), k_hi.astype(jnp.int32), gap


def _query(
  table: jax.Array,
  point: jax.Array,
  lo: jax.Array,
  hi: jax.Array,
  lo2: jax.Array,
  hi2: jax.Array,
  log2: jax.Array,
  op,
) -> jax.Array:
  """op over rows [lo, hi] × columns [lo2, hi2] (non-empty, inside)."""
  a, b = log2[hi - lo + 1], log2[hi2 - lo2 + 1]
  r2, c2 = hi - (1 << a) + 1, hi2 - (1 << b) + 1
  point = point.reshape(point.shape + (1,) * (lo.ndim - point.ndim))
  gather = lambda r, c: table[point, a, b, r, c]
  return op(
    op(gather(lo, lo2), gather(r2, lo2)), op(gather(lo, c2), gather(r2, c2))
  )


def interpolation_bounds(
  tables: WindowTables, point: jax.Array, u: Interval, v: Interval
) -> Interval:
  """Interval [R, h, w, C] holding bilinear interpolation of image
  ``point[i]`` at every (u, v) of box (i, pixel); u, v are [R, h, w]."""
  height, width = tables.minima.shape[3:5]
  log2 = jnp.asarray(
    np.floor(np.log2(np.arange(1, max(height, width) + 1))), jnp.int32
  )
  log2 = jnp.concatenate([jnp.zeros((1,), jnp.int32), log2])  # log2[n], n>=1
  c_lo, c_hi, gap_u = _snap(u)
  r_lo, r_hi, gap_v = _snap(v)
  outside = (c_lo < 0) | (c_hi > width - 1) | (r_lo < 0) | (r_hi > height - 1)
  empty = (c_lo > width - 1) | (c_hi < 0) | (r_lo > height - 1) | (r_hi < 0)
  # The window cut to the image (any valid window where it is empty).
  c_lo, c_hi = jnp.clip(c_lo, 0, width - 1), jnp.clip(c_hi, 0, width - 1)
  r_lo, r_hi = jnp.clip(r_lo, 0, height - 1), jnp.clip(r_hi, 0, height - 1)
  args = (point, r_lo, r_hi, c_lo, c_hi, log2)
  low = _query(tables.minima, *args, jnp.minimum)
  high = _query(tables.maxima, *args, jnp.maximum)
  expand = lambda m: m[..., None]
  low = jnp.where(expand(outside), jnp.minimum(low, 0.0), low)
  high = jnp.where(expand(outside), jnp.maximum(high, 0.0), high)
  low = jnp.where(expand(empty), 0.0, low)
  high = jnp.where(expand(empty), 0.0, high)
  lipschitz = tables.lipschitz[point]  # [R, C]
  slack = lipschitz[:, None, None, :] * expand(gap_u + gap_v)
  window = Interval(low - slack, high + slack)
  return _intersect(
    window, _mean_value_bounds(tables, point, u, v, low, high, slack)
  )


def _mean_value_bounds(
  tables: WindowTables,
  point: jax.Array,
  u: Interval,
  v: Interval,
  low: jax.Array,
  high: jax.Array,
  slack: jax.Array,
) -> Interval:
  """I(c) ± (G_u·δ_u + G_v·δ_v): tight where the coordinate box is small.

  Inside a cell, ∂I/∂u = (1 − f_v)(b − a) + f_v(d − c) for its four pixels,
  so |∂I/∂u| is at most a difference of two window values, <= high − low
  (likewise ∂I/∂v). Along the path from the box's centre c = (u_c, v_c) to
  any (u, v) of the box, |I(u, v) − I(c)| <= (high − low)·(δ_u + δ_v), δ the
  half-widths, plus ``slack`` for the part of the path a snapped window
  misses. Unlike the window's extrema, this shrinks to 0 with the box.
  """
  images = tables.minima[:, 0, 0]  # level (0, 0) is the image itself
  centre_u, centre_v = 0.5 * (u.lower + u.upper), 0.5 * (v.lower + v.upper)
  half_u = jnp.maximum(u.upper - centre_u, centre_u - u.lower)
  half_v = jnp.maximum(v.upper - centre_v, centre_v - v.lower)
  centre = jax.vmap(bilinear_sample)(
    jnp.take(images, point, axis=0), centre_u, centre_v
  )
  radius = (
    (high - low) * (half_u + half_v)[..., None] + slack + MEAN_VALUE_TOLERANCE
  )
  return Interval(centre - radius, centre + radius)


def _intersect(a: Interval, b: Interval) -> Interval:
  return Interval(jnp.maximum(a.lower, b.lower), jnp.minimum(a.upper, b.upper))
