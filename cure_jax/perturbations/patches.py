"""Adversarial patches: the threat model, its input boxes, and applying one.

A p×p patch (Chiang et al., "Certified Defenses for Adversarial Patches",
ICLR 2020) replaces the pixels of a square window, at any position, by
arbitrary values in [0, 1]. For one position (r, c) the set of patched
images is exactly the box

    lower = x ⊙ (1 − m),    upper = x ⊙ (1 − m) + m,

with m the window's 0/1 mask (every channel of the window free, the rest of
the image fixed). A point is certified against the threat model when the
model's margins are provably positive over every position's box, so
certification bounds all (H − p + 1)·(W − p + 1) of them (`patch_positions`),
batched along the leading axis (`patch_boxes`). ``fraction`` < 1 shrinks the
window's box towards x, [x − f·x, x + f·(1 − x)], the ε ramp of certified
patch training.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.bounds import Box


def check_patch(size, height: int, width: int, stride: int = 1) -> int:
  """Validates a patch size (and stride) for an H×W image; returns the size.

  Raises:
    ValueError: size or stride not an integer >= 1, or the patch larger
      than the image.
  """
  for name, value in (("patch size", size), ("patch stride", stride)):
    if (
      not isinstance(value, (int, np.integer))
      or isinstance(value, bool)
      or value < 1
    ):
      raise ValueError(f"the {name} must be an integer >= 1, got {value!r}.")
  if size > height or size > width:
    raise ValueError(
      f"a {size}×{size} patch does not fit in a {height}×"
      f"{width} image; use a size of at most "
      f"{min(height, width)}."
    )
  return int(size)


def _starts(extent: int, size: int, stride: int) -> np.ndarray:
  """Window starts along one axis, stride apart, the last one always kept."""
  starts = np.arange(0, extent - size + 1, stride)
  if starts[-1] != extent - size:
    starts = np.append(starts, extent - size)
  return starts


def patch_positions(
  height: int, width: int, size: int, stride: int = 1
) -> np.ndarray:
  """Top-left corners of the p×p windows of an H×W image.

  With ``stride`` 1 these are all (H − p + 1)·(W − p + 1) positions — the
  threat model. A larger stride samples them, always including the last row
  and column so that the windows still cover every pixel (certifying a
  sample does *not* certify the threat model; use it for training).
  Returns int32 [P, 2] (row, column), row-major.
  """
  check_patch(size, height, width, stride)
  rows, cols = _starts(height, size, stride), _starts(width, size, stride)
  grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1)
  return grid.reshape(-1, 2).astype(np.int32)


def patch_mask(
  height: int, width: int, size: int, position: jax.Array
) -> jax.Array:
  """The window's mask m, float32 [..., H, W, 1], 1 inside the p×p patch at
  ``position`` [..., 2] (row, column); traceable."""
  position = jnp.asarray(position)
  row = position[..., 0, None, None]
  col = position[..., 1, None, None]
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = (
    (rows >= row) & (rows < row + size) & (cols >= col) & (cols < col + size)
  )
  return inside[..., None].astype(jnp.float32)


def _rows(
  images: jax.Array, point: jax.Array, position: jax.Array, size: int
) -> tuple[jax.Array, jax.Array]:
  """The images of the rows and their windows' masks."""
  height, width = images.shape[1:3]
  return jnp.take(images, point, axis=0), patch_mask(
    height, width, size, position
  )


def patch_boxes(
  images: jax.Array,
  point: jax.Array,
  position: jax.Array,
  size: int,
  fraction=1.0,
) -> Box:
  """`Box` [R, H, W, C]: images equal to ``images[point[i]]`` outside the
  window at ``position[i]`` [R, 2], free inside; ``fraction`` < 1 shrinks the
  window's box towards x (module doc)."""
  x, mask = _rows(images, point, position, size)
  return Box(x - fraction * mask * x, x + fraction * mask * (1.0 - x))


def apply_patch(
  images: jax.Array, position: jax.Array, values: jax.Array, size: int
) -> jax.Array:
  """Pastes patches: ``values`` inside each window, ``images`` elsewhere
  (all [R, H, W, C]; ``position`` [R, 2])."""
  height, width = images.shape[1:3]
  mask = patch_mask(height, width, size, position)
  return images * (1.0 - mask) + values * mask


class PatchBoxes(NamedTuple):
  """``patch_boxes`` as a hashable function of (images, point, position).

  The region builder of patch certification (`certify.regions`): a static
  argument of `jax.jit`, equal (and so cached) for equal sizes.
  """

  size: int
  fraction: float = 1.0

  def __call__(
    self, images: jax.Array, point: jax.Array, position: jax.Array
  ) -> Box:
    return patch_boxes(images, point, position, self.size, self.fraction)
