"""The concrete transformations: inverse mapping, bilinear interpolation.

Coordinates are centred: pixel (row r, column c) of an H×W image sits at
p = (x, y) = (c − o_x, r − o_y), o = ((W − 1)/2, (H − 1)/2), with y pointing
down. The geometric part moves content by the forward map

  p_out = t + R(φ) · Sh(m) · (s · p_in),
  R(φ) = [[cos φ, −sin φ], [sin φ, cos φ]],  Sh(m) = [[1, m], [0, 1]],

(scale, then shear, then rotate, then translate), and is computed, as usual,
by inverse mapping: output pixel p reads the input at

  q = (1/s) · Sh(−m) · R(−φ) · (p − t),                              (1)

by bilinear interpolation of the four pixels around q, pixels outside the
image counting as 0 (zero padding). The photometric part follows:
x' = clip(c·x + b, 0, 1). `coordinate_bounds` bounds (1) over parameter
boxes with the same operations in the same order, so the two stay
consistent.
"""

import jax
import jax.numpy as jnp

from cure_jax.perturbations.parameters import TransformParams

DEGREE = jnp.pi / 180.0


def centered_grid(height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """Centred coordinates (x, y) of every pixel, each [H, W] float32."""
  rows, cols = jnp.meshgrid(
    jnp.arange(height, dtype=jnp.float32),
    jnp.arange(width, dtype=jnp.float32),
    indexing="ij",
  )
  return cols - (width - 1) / 2.0, rows - (height - 1) / 2.0


def source_coordinates(
  params: TransformParams, height: int, width: int
) -> tuple[jax.Array, jax.Array]:
  """(u, v) [..., H, W]: the input column and row each output pixel samples,
  eq. (1); ``params`` scalar or broadcastable against [H, W] ([S, 1, 1])."""
  x, y = centered_grid(height, width)
  x, y = x - params.translation_x, y - params.translation_y
  angle = params.rotation * DEGREE
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  x, y = cos * x + sin * y, cos * y - sin * x  # R(−φ)
  x = x - params.shearing * y  # Sh(−m)
  x, y = x / params.scaling, y / params.scaling
  return x + (width - 1) / 2.0, y + (height - 1) / 2.0


def bilinear_sample(image: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
  """Bilinear interpolation of ``image`` [H, W, C] at (u, v) [h, w]: [h, w, C],
  Σ over the 4 neighbours (v0 + i, u0 + j), i, j ∈ {0, 1}, of weight
  (1 − |v − v0 − i|)(1 − |u − u0 − j|) times the pixel (0 outside)."""
  height, width = image.shape[:2]
  u0, v0 = jnp.floor(u), jnp.floor(v)
  fu, fv = (u - u0)[..., None], (v - v0)[..., None]
  u0, v0 = u0.astype(jnp.int32), v0.astype(jnp.int32)

  def pixel(row, col):
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    value = image[jnp.clip(row, 0, height - 1), jnp.clip(col, 0, width - 1)]
    return jnp.where(inside[..., None], value, 0.0)

  top = (1 - fu) * pixel(v0, u0) + fu * pixel(v0, u0 + 1)
  bottom = (1 - fu) * pixel(v0 + 1, u0) + fu * pixel(v0 + 1, u0 + 1)
  return (1 - fv) * top + fv * bottom


def transform_image(image: jax.Array, params: TransformParams) -> jax.Array:
  """Applies one transformation (scalar ``params``) to one image [H, W, C].

  Geometric (inverse mapping with bilinear interpolation and zero padding),
  then photometric, clip(c·x + b, 0, 1).
  """
  height, width = image.shape[:2]
  u, v = source_coordinates(params, height, width)
  moved = bilinear_sample(image, u, v)
  return jnp.clip(params.contrast * moved + params.brightness, 0.0, 1.0)


def transform_images(images: jax.Array, params: TransformParams) -> jax.Array:
  """Transforms images [B, H, W, C]; ``params`` leaves scalar or [B]."""
  params = TransformParams(
    *(
      jnp.broadcast_to(jnp.asarray(p, jnp.float32), images.shape[:1])
      for p in params
    )
  )
  return jax.vmap(transform_image)(images, params)
