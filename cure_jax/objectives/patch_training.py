"""Certified patch training: IBP over randomly sampled patch positions.

Chiang et al. ("Certified Defenses for Adversarial Patches", ICLR 2020)
train against p×p patches by IBP over the patch boxes (`beyond_lp.patches`:
the window free in [0, 1], the rest of the image fixed). Bounding all
(H − p + 1)(W − p + 1) positions per example is too costly for training,
so their *random patch* variant samples k positions per example and
minimizes the worst of them:

    L_patch(x, y) = max_{i ≤ k} CE(o_i, y),   o_i = worst-case logits over
                                              the box of position i,

an unbiased-in-the-limit, cheaper surrogate of the all-positions loss (the
certificate itself still needs every position, `certify.regions`). During
the ε ramp the window's box is shrunk towards x by ``fraction`` ∈ [0, 1].
"""

import jax
import jax.numpy as jnp

from cure_jax.objectives.base import (
  Network,
  certified,
  robust_cross_entropy,
  worst_case_logits,
)
from cure_jax.objectives.robust_losses import RobustLoss
from cure_jax.perturbations.patches import check_patch, patch_boxes


def sample_positions(
  key: jax.Array, batch: int, positions: int, height: int, width: int, size: int
) -> jax.Array:
  """[B, k, 2] corners drawn uniformly from the valid patch positions."""
  k_row, k_col = jax.random.split(key)
  rows = jax.random.randint(k_row, (batch, positions), 0, height - size + 1)
  cols = jax.random.randint(k_col, (batch, positions), 0, width - size + 1)
  return jnp.stack([rows, cols], axis=-1)


def random_patch_ibp(
  network: Network,
  images: jax.Array,
  labels: jax.Array,
  *,
  size: int,
  positions: int,
  key: jax.Array,
  fraction=1.0,
) -> RobustLoss:
  """Chiang et al.'s random-patch IBP loss, per example.

  Args:
    network: the model at the step's parameters and BatchNorm moments.
    images: [B, H, W, C] in [0, 1].
    labels: [B].
    size: p, the patch side.
    positions: k, positions sampled per example.
    key: PRNG key of the positions.
    fraction: the window's box as a fraction of [0, 1] (ε ramp), scalar.

  Returns:
    `RobustLoss`: max over the k positions of the robust CE, the worst
    position's worst-case logits, and whether every sampled position
    certifies.

  Raises:
    ValueError: the patch does not fit the images, or k < 1.
  """
  batch, height, width = images.shape[:3]
  check_patch(size, height, width)
  if not isinstance(positions, int) or positions < 1:
    raise ValueError(
      f"patch positions per example must be an int >= 1, got {positions!r}."
    )
  corners = sample_positions(key, batch, positions, height, width, size)
  point = jnp.repeat(jnp.arange(batch), positions)
  box = patch_boxes(images, point, corners.reshape(-1, 2), size, fraction)
  margins = network.margin_bounds(box, jnp.take(labels, point)).lower
  losses = robust_cross_entropy(margins).reshape(batch, positions)
  worst = jnp.argmax(losses, axis=1)
  logits = worst_case_logits(margins).reshape(batch, positions, -1)
  return RobustLoss(
    jnp.max(losses, axis=1),
    jnp.take_along_axis(logits, worst[:, None, None], axis=1)[:, 0],
    jnp.all(certified(margins).reshape(batch, positions), axis=1),
  )
