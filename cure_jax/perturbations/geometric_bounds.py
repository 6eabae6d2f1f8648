"""Interval bounds of transformed images over parameter boxes.

For an image x and a box of parameters, every pixel of the transformed image
clip(c·I_θ(x) + b, 0, 1) (`warps.transform_image`) is bounded by

1. `coordinate_bounds`: the range of its source coordinates (u, v);
2. `interpolation_bounds`: the image's extrema over the pixels that bilinear
   interpolation can read there (0 included past the border);
3. photometric interval arithmetic, exact per pixel given step 2:
   [c_lo, c_hi]·[g_lo, g_hi] + [b_lo, b_hi], then clipped to [0, 1] (the clip
   is monotone).

The result is a `Box` input set for the bound transforms; its elements vary
independently, so over-approximation comes from both the box and the
per-pixel bounds, and shrinks as the parameter box is split.
"""

import jax
import jax.numpy as jnp

from cure_jax.bounds import Box, Interval
from cure_jax.perturbations.coordinate_bounds import (
  multiply,
  source_coordinate_bounds,
)
from cure_jax.perturbations.interpolation_bounds import (
  WindowTables,
  interpolation_bounds,
  window_tables,
)
from cure_jax.perturbations.parameters import ParameterBox
from cure_jax.types import PIXEL_DOMAIN


def photometric_bounds(values: Interval, box: ParameterBox) -> Interval:
  """Unclipped bounds [R, H, W, C] of c·x + b for x ∈ values [R, H, W, C],
  c and b in their ranges (box leaves [R])."""
  per_row = lambda leaf: jnp.reshape(leaf, (-1, 1, 1, 1))
  contrast = Interval(per_row(box.lower.contrast), per_row(box.upper.contrast))
  scaled = multiply(contrast, values)
  return Interval(
    scaled.lower + per_row(box.lower.brightness),
    scaled.upper + per_row(box.upper.brightness),
  )


def row_bounds(
  tables: WindowTables, point: jax.Array, box: ParameterBox
) -> Interval:
  """Bounds [R, H, W, C] in [0, 1] of row i's image `point[i]` transformed by
  every parameter of box i (leaves [R])."""
  height, width = tables.minima.shape[3:5]
  per_row = jax.tree.map(lambda leaf: jnp.reshape(leaf, (-1, 1, 1)), box)
  u, v = source_coordinate_bounds(per_row, height, width)
  moved = interpolation_bounds(tables, point, u, v)
  values = photometric_bounds(moved, box)
  return Interval(
    jnp.clip(values.lower, *PIXEL_DOMAIN), jnp.clip(values.upper, *PIXEL_DOMAIN)
  )


def transformed_image_bounds(images: jax.Array, box: ParameterBox) -> Interval:
  """Bounds [B, H, W, C]: for every θ in ``box`` (scalar leaves or [B]),
  lower <= `warps.transform_images`(images, θ) <= upper."""
  batch = images.shape[0]
  box = jax.tree.map(
    lambda leaf: jnp.broadcast_to(jnp.asarray(leaf, jnp.float32), (batch,)), box
  )
  return row_bounds(window_tables(images), jnp.arange(batch), box)


def geometric_input_boxes(
  images: jax.Array, regions: ParameterBox, point: jax.Array, region: jax.Array
) -> Box:
  """A `Box` [R, H, W, C] holding every transformation of image ``point[i]``
  with parameters in sub-box ``region[i]`` of the S ``regions``."""
  box = jax.tree.map(lambda leaf: leaf[region], regions)
  bounds = row_bounds(window_tables(images), point, box)
  return Box(bounds.lower, bounds.upper)


def region_boxes(images: jax.Array, point: jax.Array, box: ParameterBox) -> Box:
  """Input boxes of rows (image ``point[i]``, parameter box ``box[i]``).

  The region builder of geometric certification (`certify.regions`).
  """
  bounds = row_bounds(window_tables(images), point, box)
  return Box(bounds.lower, bounds.upper)
