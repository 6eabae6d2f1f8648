"""Interval bounds of transformed images over parameter boxes.

For an image x and a box of parameters, every pixel of the transformed image
clip(c·I_θ(x) + b, 0, 1) (`transforms.transform_image`) is bounded by

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
  """Bounds of c·x + b for x ∈ values, c and b in their ranges.

  Args:
    values: [R, H, W, C] bounds of the pixels.
    box: parameter ranges with leaves [R] (one box per row).

  Returns:
    [R, H, W, C] bounds (not clipped).
  """
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
  """Bounds of transformed images, one (image, parameter box) pair per row.

  Args:
    tables: `window_tables` of the images [B, H, W, C].
    point: [R] index of each row's image.
    box: parameter ranges with leaves [R].

  Returns:
    Interval [R, H, W, C], clipped to [0, 1].
  """
  height, width = tables.minima.shape[3:5]
  per_row = jax.tree.map(lambda leaf: jnp.reshape(leaf, (-1, 1, 1)), box)
  u, v = source_coordinate_bounds(per_row, height, width)
  moved = interpolation_bounds(tables, point, u, v)
  values = photometric_bounds(moved, box)
  return Interval(
    jnp.clip(values.lower, *PIXEL_DOMAIN), jnp.clip(values.upper, *PIXEL_DOMAIN)
  )


def transformed_image_bounds(images: jax.Array, box: ParameterBox) -> Interval:
  """Bounds of every transformation in ``box`` of each image.

  Args:
    images: [B, H, W, C] in [0, 1].
    box: one parameter box (scalar leaves) for every image, or leaves [B].

  Returns:
    Interval [B, H, W, C]: for every θ in the box, lower <=
    `transforms.transform_images`(images, θ) <= upper.
  """
  batch = images.shape[0]
  box = jax.tree.map(
    lambda leaf: jnp.broadcast_to(jnp.asarray(leaf, jnp.float32), (batch,)), box
  )
  return row_bounds(window_tables(images), jnp.arange(batch), box)


def geometric_input_boxes(
  images: jax.Array, regions: ParameterBox, point: jax.Array, region: jax.Array
) -> Box:
  """Input boxes of (image, sub-box) rows, for the certification cascade.

  Args:
    images: [B, H, W, C] in [0, 1].
    regions: the S sub-boxes of a family (leaves [S]).
    point: [R] image index of each row.
    region: [R] sub-box index of each row.

  Returns:
    A `Box` [R, H, W, C] holding every transformation of image ``point[i]``
    with parameters in sub-box ``region[i]``.
  """
  box = jax.tree.map(lambda leaf: leaf[region], regions)
  bounds = row_bounds(window_tables(images), point, box)
  return Box(bounds.lower, bounds.upper)


def region_boxes(images: jax.Array, point: jax.Array, box: ParameterBox) -> Box:
  """Input boxes of rows (image ``point[i]``, parameter box ``box[i]``).

  The region builder of geometric certification (`certify.regions`).

  Args:
    images: [B, H, W, C] in [0, 1].
    point: [R] image index of each row.
    box: parameter boxes with leaves [R].

  Returns:
    A `Box` [R, H, W, C].
  """
  bounds = row_bounds(window_tables(images), point, box)
  return Box(bounds.lower, bounds.upper)
