"""Tests for cure_jax.parallel.global_batch."""

import numpy as np
import pytest

from cure_jax import parallel


@pytest.mark.parametrize(
  "global_batch, devices, processes, expected",
  [
    (256, 8, 1, 256),
    (256, 8, 2, 128),
    (256, 32, 4, 64),
    (8, 8, 8, 1),
  ],
)
def test_check_global_batch_size_returns_rows_per_process(
  global_batch, devices, processes, expected
):
  assert (
    parallel.check_global_batch_size(global_batch, devices, processes)
    == expected
  )


@pytest.mark.parametrize(
  "global_batch, devices, processes, message",
  [
    (100, 8, 1, "multiple of 8, e.g. 96 or 104"),
    (4, 8, 2, "multiple of 8, e.g. 8"),
    (0, 1, 1, "multiple of 1, e.g. 1"),
    (64, 6, 4, "6 devices cannot be spread evenly over 4 processes"),
  ],
)
def test_check_global_batch_size_explains_invalid_splits(
  global_batch, devices, processes, message
):
  with pytest.raises(ValueError, match=message):
    parallel.check_global_batch_size(global_batch, devices, processes)


def test_per_process_batch_size_uses_mesh_and_process_count():
  mesh = parallel.make_mesh()  # One process here.
  assert parallel.per_process_batch_size(4 * mesh.size, mesh) == 4 * mesh.size


def test_pad_batch_appends_zero_rows_and_masks_them():
  batch = {
    "x": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32),
    "y": np.array([7, 9]),
  }
  padded, mask = parallel.pad_batch(batch, 4)
  np.testing.assert_array_equal(
    padded["x"], [[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [0.0, 0.0]]
  )
  np.testing.assert_array_equal(padded["y"], [7, 9, 0, 0])
  assert padded["x"].dtype == np.float32
  assert padded["y"].dtype == batch["y"].dtype
  np.testing.assert_array_equal(mask, [True, True, False, False])


def test_pad_batch_of_full_batch_is_identity():
  padded, mask = parallel.pad_batch(np.arange(3), 3)
  np.testing.assert_array_equal(padded, np.arange(3))
  assert mask.all()


@pytest.mark.parametrize(
  "batch, message",
  [
    ({"x": np.zeros(5)}, "more than batch_size=4"),
    ({"x": np.zeros(2), "y": np.zeros(3)}, "one common leading axis"),
    ({"x": np.zeros(2), "eps": 0.1}, "one common leading axis"),
  ],
)
def test_pad_batch_rejects_bad_batches(batch, message):
  with pytest.raises(ValueError, match=message):
    parallel.pad_batch(batch, 4)
