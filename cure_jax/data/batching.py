"""Stateless batching: a batch is a pure function of (seed, step).

Training: the global batch at step s is taken from epoch e = s // S, where
S = N // B steps make an epoch (the last N mod B examples of each epoch's
permutation are dropped). Epoch e visits the examples in the order of a
permutation drawn from `np.random.default_rng([seed, 0, e])`; step s takes
positions [(s mod S) B, (s mod S + 1) B) of it. Augmentations are drawn from
`np.random.default_rng([seed, 1, s])` for the whole global batch. Process i
of n gets the contiguous slice [i B/n, (i + 1) B/n) of the global batch, so
the hosts' slices concatenate to the single-host batch, and resuming at any
step needs nothing but the step.

Evaluation visits a split in order; the last global batch is padded (zero
images, label 0) and a mask marks the real examples, so that every example
counts exactly once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from cure_jax.data import augment, loading
from cure_jax.types import Batch

# Independent random streams derived from the seed.
_PERMUTATION_STREAM = 0
_AUGMENTATION_STREAM = 1


class EvalBatch(NamedTuple):
  """One host's evaluation batch: float32 images [b, H, W, C] in [0, 1],
  int32 labels [b], bool mask [b] (False where padded: zero image, label 0)."""

  images: np.ndarray
  labels: np.ndarray
  mask: np.ndarray


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Returns N // B, the full global batches in an epoch (B over all hosts).

  Raises ValueError unless 0 < B <= N.
  """
  if not 0 < global_batch_size <= num_examples:
    raise ValueError(
      f"global_batch_size must be in [1, {num_examples}] (the number of"
      f" examples), got {global_batch_size}."
    )
  return num_examples // global_batch_size


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Returns how many batches `eval_batches` yields: ceil(N / B)."""
  return -(-num_examples // global_batch_size)


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """Returns the epoch's read-only permutation of range(N), a pure function
  of (N, seed >= 0, epoch >= 0)."""
  rng = np.random.default_rng([seed, _PERMUTATION_STREAM, epoch])
  order = rng.permutation(num_examples)
  order.flags.writeable = False
  return order


def _host_slice(
  global_batch_size: int, process_index: int, process_count: int
) -> slice:
  """Returns slice(i B/n, (i + 1) B/n), host i's part of a global batch.

  Raises ValueError if n does not divide B or i is not in [0, n).
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index must be in [0, process_count), got {process_index} of"
      f" {process_count}."
    )
  if global_batch_size % process_count:
    raise ValueError(
      f"The global batch size {global_batch_size} must be divisible by the"
      f" number of processes {process_count}; use a multiple of"
      f" {process_count}."
    )
  local = global_batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def _check_split(split: loading.Split) -> None:
  """Raises ValueError unless images are uint8 NHWC with one label each."""
  if split.images.dtype != np.uint8 or split.images.ndim != 4:
    raise ValueError(
      f"Expected uint8 [N, H, W, C] images, got {split.images.dtype}"
      f" {split.images.shape}."
    )
  if split.labels.shape != split.images.shape[:1]:
    raise ValueError(
      f"Expected {len(split.images)} labels, got shape {split.labels.shape}."
    )


def train_batch(
  split: loading.Split,
  step: int,
  *,
  global_batch_size: int,
  seed: int,
  augmentation: augment.Augmentation | None = None,
  process_index: int = 0,
  process_count: int = 1,
) -> Batch:
  """Returns this host's part of the training batch at `step`.

  `step` (>= 0, an int or scalar array) runs on through epochs indefinitely;
  `seed` (>= 0) drives shuffling and augmentation; B = `global_batch_size`
  over all n = `process_count` hosts, n dividing B. Returns float32 images
  in [0, 1] and int32 labels at positions [i B/n, (i + 1) B/n) of the global
  batch, i = `process_index`.

  Raises:
    ValueError: invalid step, seed, batch size or host split.
  """
  _check_split(split)
  step, seed = int(step), int(seed)  # Also accepts scalar (jax) arrays.
  if step < 0 or seed < 0:
    raise ValueError(f"step and seed must be >= 0, got {step} and {seed}.")
  epoch, position = divmod(
    step, steps_per_epoch(split.num_examples, global_batch_size)
  )
  host = _host_slice(global_batch_size, process_index, process_count)
  order = epoch_permutation(split.num_examples, seed, epoch)
  indices = order[
    position * global_batch_size : (position + 1) * global_batch_size
  ][host]
  images = split.images[indices]
  if augmentation is not None:
    rng = np.random.default_rng([seed, _AUGMENTATION_STREAM, step])
    draws = augment.sample_draws(
      rng, global_batch_size, images.shape[1], augmentation
    )
    local_draws = augment.AugmentationDraws(
      draws.offsets[host], draws.flips[host]
    )
    images = augment.apply_augmentation(images, augmentation, local_draws)
  return Batch(
    augment.to_unit_float(images), split.labels[indices].astype(np.int32)
  )


def eval_batches(
  split: loading.Split,
  *,
  global_batch_size: int,
  center_crop: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[EvalBatch]:
  """Returns an iterator over this host's part of each evaluation batch.

  Global batch k holds examples [k B, (k + 1) B) in dataset order, the last
  one padded to B; every host gets `num_eval_batches(N, B)` batches, each the
  positions [i B/n, (i + 1) B/n), optionally centre-cropped.

  Raises:
    ValueError: invalid batch size, crop or host split (raised here, not
      when iterating).
  """
  _check_split(split)
  if global_batch_size < 1:
    raise ValueError(
      f"global_batch_size must be >= 1, got {global_batch_size}."
    )
  if center_crop is not None:
    augment.center_crop(split.images[:0], center_crop)  # Validates the size.
  host = _host_slice(global_batch_size, process_index, process_count)
  return _iterate_eval_batches(split, global_batch_size, center_crop, host)


def _iterate_eval_batches(
  split: loading.Split,
  global_batch_size: int,
  center_crop: int | None,
  host: slice,
) -> Iterator[EvalBatch]:
  """Yields the evaluation batches described in `eval_batches`."""
  num_examples = split.num_examples
  for first in range(0, num_examples, global_batch_size):
    indices = np.arange(first, first + global_batch_size)[host]
    mask = indices < num_examples
    indices = np.where(mask, indices, 0)
    images = np.where(mask[:, None, None, None], split.images[indices], 0)
    labels = np.where(mask, split.labels[indices], 0)
    if center_crop is not None:
      images = augment.center_crop(images, center_crop)
    yield EvalBatch(
      augment.to_unit_float(images.astype(np.uint8)),
      labels.astype(np.int32),
      mask,
    )
