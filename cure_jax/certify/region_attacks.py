"""Empirical upper bounds beyond l_p: patch PGD and transformation grids.

The counterparts of PGD for the threat models of `certify.regions`: a point
is *broken* when some region holds an input the model misclassifies, and
the fraction not broken bounds the certified accuracy from above.

* `patch_attack`: at every patch position, projected sign-gradient ascent
  on the margin loss max_{j≠y} z_j − z_y over the window's values in
  [0, 1] (Chiang et al., 2020), from a random start; a position breaks the
  point if any iterate is misclassified.
* `grid_attack`: every transformation of a dense parameter grid
  (`perturbations.parameters.parameter_grid`), endpoints included.

Both visit (point, region) rows in chunks, point after point, and drop the
remaining rows of a point once it is broken (`regions.row_chunks`).
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.attacks.losses import margin, misclassified
from cure_jax.certify.cascade import predict
from cure_jax.certify.regions import row_chunks
from cure_jax.models.call_adapter import adapt_apply
from cure_jax.parallel.precision import cast_floating, certification_precision
from cure_jax.perturbations.parameters import TransformParams
from cure_jax.perturbations.patches import apply_patch
from cure_jax.perturbations.warps import transform_images
from cure_jax.types import PyTree


def _prepare(apply_fn, variables, images, labels, points):
  """The adapted model (`adapt_apply`), float32 inputs, the points to
  attack, and the misclassified as broken."""
  apply_fn = adapt_apply(apply_fn)
  variables = cast_floating(variables, jnp.float32)
  images = jnp.asarray(images, jnp.float32)
  labels = np.asarray(labels, np.int32)
  correct = np.asarray(predict(apply_fn, variables, images)) == labels
  if points is None:
    points = np.flatnonzero(correct)
  return apply_fn, variables, images, labels, points, ~correct


def _padded_rows(count: int, size: int) -> np.ndarray:
  """0, …, count − 1, then row 0 repeated: a fixed-size (one-compile) call."""
  return np.concatenate([np.arange(count), np.zeros(size - count, np.int64)])


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _patch_rows_broken(
  apply_fn, size, steps, variables, images, labels, position, step_size, key
):
  """[R] whether PGD finds a misclassified patch at each row's position."""
  values = jax.random.uniform(key, images.shape, images.dtype)
  logits_of = lambda v: apply_fn(
    variables, apply_patch(images, position, v, size), train=False
  )

  def loss(v):
    logits = logits_of(v)
    return jnp.sum(margin(logits, labels)), logits

  broken = jnp.zeros(labels.shape, bool)
  for _ in range(steps):  # unrolled: convolutions in loops are slow on CPU
    grad, logits = jax.grad(loss, has_aux=True)(values)
    broken |= misclassified(logits, labels)
    values = jnp.clip(values + step_size * jnp.sign(grad), 0.0, 1.0)
  return broken | misclassified(logits_of(values), labels)


def patch_attack(
  apply_fn: Callable,
  variables: PyTree,
  images,
  labels,
  *,
  size: int,
  positions: np.ndarray,
  steps: int = 10,
  step_size: float = 0.25,
  key: jax.Array | None = None,
  rows_per_batch: int = 512,
  points: np.ndarray | None = None,
  first_positions: np.ndarray | None = None,
) -> np.ndarray:
  """[B] bool: correctly classified and not broken by PGD at any position.

  Args:
    positions: [P, 2] corners (`patches.patch_positions`).
    steps: PGD steps per position (0: the random patch only).
    key: PRNG key of the random starts (default key 0).
    rows_per_batch: (point, position) rows per call.
    points: indices to attack (default: the correctly classified points);
      the others are reported as they are classified.
    first_positions: optional [B] index into ``positions`` (−1: none) tried
      first for each point, all points in one batch — e.g. the position
      whose bound failed (`RegionResult.failing_region`); a point broken
      there skips the full sweep.
  """
  apply_fn, variables, images, labels, points, broken = _prepare(
    apply_fn, variables, images, labels, points
  )
  key = jax.random.key(0) if key is None else key
  positions = np.asarray(positions, np.int32)

  def attack(point, region, chunk):
    rows = _padded_rows(len(point), rows_per_batch)
    with certification_precision():
      hit = _patch_rows_broken(
        apply_fn,
        size,
        steps,
        variables,
        jnp.take(images, point[rows], axis=0),
        jnp.asarray(labels[point[rows]]),
        jnp.asarray(positions[region[rows]]),
        jnp.float32(step_size),
        jax.random.fold_in(key, chunk),
      )
    broken[point[np.asarray(hit)[: len(point)]]] = True

  chunk = 0
  if first_positions is not None:
    first = np.asarray(points)[np.asarray(first_positions)[points] >= 0]
    for start in range(0, len(first), rows_per_batch):
      point = first[start : start + rows_per_batch]
      attack(point, np.asarray(first_positions)[point], chunk)
      chunk += 1
  for point, region in row_chunks(
    points, len(positions), rows_per_batch, broken
  ):
    attack(point, region, chunk)
    chunk += 1
  return ~broken


@functools.partial(jax.jit, static_argnums=0)
def _grid_rows_broken(apply_fn, variables, images, labels, params):
  moved = transform_images(images, params)
  return misclassified(apply_fn(variables, moved, train=False), labels)


def grid_attack(
  apply_fn: Callable,
  variables: PyTree,
  images,
  labels,
  *,
  grid: TransformParams,
  rows_per_batch: int = 512,
  points: np.ndarray | None = None,
) -> np.ndarray:
  """[B] bool: correctly classified under every transform of ``grid``
  (leaves [G], `parameter_grid`); ``points`` default to the correct ones."""
  apply_fn, variables, images, labels, points, broken = _prepare(
    apply_fn, variables, images, labels, points
  )
  grid = jax.tree.map(np.asarray, grid)
  size = int(np.shape(grid.rotation)[0])
  for point, region in row_chunks(points, size, rows_per_batch, broken):
    rows = _padded_rows(len(point), rows_per_batch)
    params = TransformParams(*(leaf[region[rows]] for leaf in grid))
    with certification_precision():
      hit = _grid_rows_broken(
        apply_fn,
        variables,
        jnp.take(images, point[rows], axis=0),
        jnp.asarray(labels[point[rows]]),
        params,
      )
    broken[point[np.asarray(hit)[: len(point)]]] = True
  return ~broken
