"""Small synthetic image classification data for the examples.

Class k of K is an image of uniform noise in [0, ``noise``] with a square
brightened by ``contrast`` in the k-th of K positions along the diagonal,
clipped to [0, 1]: learned in a few hundred steps, and with noise and
contrast comparable, only robust to small perturbations if trained for it.
"""

import jax
import jax.numpy as jnp
import numpy as np


def make_images(
  key: jax.Array,
  num: int,
  size: int = 8,
  num_classes: int = 3,
  noise: float = 0.5,
  contrast: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
  """``num`` images [num, size, size, 1] in [0, 1] and their int32 labels.

  Args:
    key: PRNG key.
    num: number of examples.
    size: image height and width (>= 2 · num_classes).
    num_classes: K.
    noise: the noise's upper end.
    contrast: brightness added inside the class's square.

  Returns:
    (images, labels) as numpy arrays.

  Raises:
    ValueError: ``size`` is too small for K squares.
  """
  side = size // num_classes
  if side < 2:
    raise ValueError(
      f"size {size} leaves no room for {num_classes} squares of side >= 2; "
      f"use size >= {2 * num_classes}."
    )
  key_labels, key_noise = jax.random.split(key)
  labels = jax.random.randint(key_labels, (num,), 0, num_classes)
  grid = jnp.arange(size)
  start = labels[:, None] * side
  inside = (grid[None, :] >= start) & (grid[None, :] < start + side)
  square = inside[:, :, None] & inside[:, None, :]
  background = noise * jax.random.uniform(key_noise, (num, size, size))
  images = jnp.clip(background + contrast * square, 0.0, 1.0)[..., None]
  return np.asarray(images, np.float32), np.asarray(labels, np.int32)
