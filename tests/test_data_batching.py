"""Tests for cure_jax.data.batching: stateless, multi-host batches."""

import numpy as np
import pytest

from cure_jax.data import augment, batching, loading

_CIFAR_AUG = augment.Augmentation(random_flip=True, pad=2)


def _indexed_split(num_examples, size=4):
  """Each image is filled with its index; its label is its index too."""
  ids = np.arange(num_examples)
  images = np.broadcast_to(
    ids[:, None, None, None], (num_examples, size, size, 1)
  )
  return loading.Split(images.astype(np.uint8), ids.astype(np.int32))


def _random_split(num_examples, seed=0):
  rng = np.random.default_rng(seed)
  return loading.Split(
    rng.integers(0, 256, (num_examples, 8, 8, 3), dtype=np.uint8),
    rng.integers(0, 10, num_examples).astype(np.int32),
  )


def test_steps_per_epoch_drops_the_remainder():
  assert batching.steps_per_epoch(10, 3) == 3
  assert batching.steps_per_epoch(60_000, 256) == 234
  for bad in (0, 11):
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 10\]"):
      batching.steps_per_epoch(10, bad)


def test_each_epoch_is_a_permutation_without_repeats():
  split = _indexed_split(10)
  seen_by_epoch = []
  for epoch in range(3):
    ids = np.concatenate(
      [
        batching.train_batch(
          split, 3 * epoch + s, global_batch_size=3, seed=7
        ).labels
        for s in range(3)
      ]
    )
    assert len(set(ids)) == 9  # 3 batches of 3, no repeats; 1 dropped.
    order = batching.epoch_permutation(10, 7, epoch)
    np.testing.assert_array_equal(ids, order[:9])
    np.testing.assert_array_equal(np.sort(order), np.arange(10))
    seen_by_epoch.append(tuple(ids))
  assert len(set(seen_by_epoch)) == 3  # Epochs are shuffled differently.


def test_batches_are_pure_functions_of_seed_and_step():
  split = _random_split(50)
  kwargs = dict(global_batch_size=8, seed=3, augmentation=_CIFAR_AUG)
  first = batching.train_batch(split, 11, **kwargs)
  batching.train_batch(split, 0, **kwargs)  # Order of calls is irrelevant.
  again = batching.train_batch(split, 11, **kwargs)
  np.testing.assert_array_equal(first.images, again.images)
  np.testing.assert_array_equal(first.labels, again.labels)
  other_step = batching.train_batch(split, 12, **kwargs)
  other_seed = batching.train_batch(split, 11, **{**kwargs, "seed": 4})
  assert not np.array_equal(first.images, other_step.images)
  assert not np.array_equal(first.images, other_seed.images)


def test_step_and_seed_may_be_scalar_arrays():
  split = _random_split(20)
  expected = batching.train_batch(split, 3, global_batch_size=4, seed=2)
  got = batching.train_batch(
    split, np.asarray(3), global_batch_size=4, seed=np.int64(2)
  )
  np.testing.assert_array_equal(got.labels, expected.labels)


def test_batch_values_are_the_examples_in_unit_range():
  split = _random_split(20)
  batch = batching.train_batch(split, 1, global_batch_size=5, seed=0)
  indices = batching.epoch_permutation(20, 0, 0)[5:10]
  assert batch.images.dtype == np.float32 and batch.labels.dtype == np.int32
  np.testing.assert_array_equal(
    batch.images, split.images[indices] / np.float32(255)
  )
  np.testing.assert_array_equal(batch.labels, split.labels[indices])


def test_augmentation_changes_only_pixels_not_examples():
  split = _indexed_split(12, size=6)
  batch = batching.train_batch(
    split, 2, global_batch_size=4, seed=1, augmentation=_CIFAR_AUG
  )
  # Every pixel of an indexed image equals its index, whatever the crop/flip.
  labels_as_pixels = batch.labels[:, None, None, None]
  np.testing.assert_array_equal(
    batch.images * 255, np.broadcast_to(labels_as_pixels, batch.images.shape)
  )


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_slices_concatenate_to_the_global_batch(process_count):
  split = _random_split(40)
  kwargs = dict(global_batch_size=8, seed=5, augmentation=_CIFAR_AUG)
  for step in (0, 6):
    global_batch = batching.train_batch(split, step, **kwargs)
    parts = [
      batching.train_batch(
        split, step, process_index=i, process_count=process_count, **kwargs
      )
      for i in range(process_count)
    ]
    np.testing.assert_array_equal(
      np.concatenate([p.images for p in parts]), global_batch.images
    )
    np.testing.assert_array_equal(
      np.concatenate([p.labels for p in parts]), global_batch.labels
    )


def test_invalid_host_splits_and_arguments_are_rejected():
  split = _random_split(20)
  with pytest.raises(
    ValueError, match="must be divisible by the number of processes 3"
  ):
    batching.train_batch(split, 0, global_batch_size=8, seed=0, process_count=3)
  with pytest.raises(ValueError, match="process_index must be in"):
    batching.train_batch(
      split, 0, global_batch_size=8, seed=0, process_index=2, process_count=2
    )
  with pytest.raises(ValueError, match="step and seed must be >= 0"):
    batching.train_batch(split, -1, global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="uint8"):
    batching.train_batch(
      loading.Split(split.images / 255.0, split.labels),
      0,
      global_batch_size=8,
      seed=0,
    )


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_once_in_order(process_count):
  split = _indexed_split(10)
  per_host = [
    list(
      batching.eval_batches(
        split, global_batch_size=4, process_index=i, process_count=process_count
      )
    )
    for i in range(process_count)
  ]
  assert all(
    len(batches) == batching.num_eval_batches(10, 4) == 3
    for batches in per_host
  )
  visited = []
  for k in range(3):  # Global batch k = the hosts' parts, concatenated.
    labels = np.concatenate([batches[k].labels for batches in per_host])
    mask = np.concatenate([batches[k].mask for batches in per_host])
    images = np.concatenate([batches[k].images for batches in per_host])
    visited.extend(labels[mask])
    assert not images[~mask].any() and not labels[~mask].any()  # Zero pads.
    np.testing.assert_array_equal(images[mask][:, 0, 0, 0] * 255, labels[mask])
  np.testing.assert_array_equal(visited, np.arange(10))


def test_eval_center_crop_and_validation():
  split = loading.Split(
    np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1),
    np.array([3, 4], np.int32),
  )
  (batch,) = batching.eval_batches(split, global_batch_size=2, center_crop=2)
  np.testing.assert_array_equal(batch.images * 255, split.images[:, 1:3, 1:3])
  with pytest.raises(ValueError, match="Cannot crop 5x5"):
    batching.eval_batches(split, global_batch_size=2, center_crop=5)
  with pytest.raises(ValueError, match="divisible"):
    batching.eval_batches(split, global_batch_size=3, process_count=2)
