"""Tests for cure_jax/beyond_lp/patches.py: positions, boxes, patching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.perturbations import patches


def _images(batch=3, height=7, width=9, channels=2, seed=0):
  return jax.random.uniform(
    jax.random.key(seed), (batch, height, width, channels)
  )


@pytest.mark.parametrize("size", [1, 2, 5])
def test_positions_are_every_window_including_the_borders(size):
  positions = patches.patch_positions(7, 9, size)
  assert positions.shape == ((7 - size + 1) * (9 - size + 1), 2)
  assert len({tuple(p) for p in positions}) == len(positions)
  assert positions.min() == 0
  assert positions[:, 0].max() == 7 - size
  assert positions[:, 1].max() == 9 - size
  # Every pixel is covered by some window (corners included).
  masks = patches.patch_mask(7, 9, size, positions)
  assert np.all(np.asarray(masks).sum(0) >= 1)


def test_a_stride_samples_windows_but_keeps_the_last_row_and_column():
  positions = patches.patch_positions(10, 10, 3, stride=4)
  np.testing.assert_array_equal(np.unique(positions[:, 0]), [0, 4, 7])
  np.testing.assert_array_equal(np.unique(positions[:, 1]), [0, 4, 7])


def test_mask_is_the_window_by_hand():
  mask = np.asarray(patches.patch_mask(4, 5, 2, np.array([1, 3])))[..., 0]
  expected = np.zeros((4, 5))
  expected[1:3, 3:5] = 1
  np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_boxes_hold_exactly_the_patched_images(size):
  x = _images()
  positions = patches.patch_positions(7, 9, size)
  point = np.arange(len(positions)) % x.shape[0]
  box = patches.patch_boxes(x, point, positions, size)
  mask = np.asarray(patches.patch_mask(7, 9, size, positions))
  lower, upper = np.asarray(box.lower), np.asarray(box.upper)
  rows = np.asarray(x)[point]
  # Outside the window the box is the point; inside it is [0, 1].
  np.testing.assert_array_equal(np.where(mask == 0, lower, rows), rows)
  np.testing.assert_array_equal(np.where(mask == 0, upper, rows), rows)
  inside = np.broadcast_to(mask, lower.shape) == 1
  assert np.all(lower[inside] == 0) and np.all(upper[inside] == 1)
  # Any patch values give an image inside the box.
  for seed in range(3):
    values = jax.random.uniform(jax.random.key(seed), rows.shape)
    patched = np.asarray(
      patches.apply_patch(jnp.asarray(rows), positions, values, size)
    )
    assert np.all(patched >= lower) and np.all(patched <= upper)


def test_fraction_shrinks_the_window_box_towards_the_point():
  x = _images()
  position = np.array([[2, 3]] * 3)
  full = patches.patch_boxes(x, np.arange(3), position, 2)
  half = patches.patch_boxes(x, np.arange(3), position, 2, fraction=0.5)
  none = patches.patch_boxes(x, np.arange(3), position, 2, fraction=0.0)
  np.testing.assert_allclose(half.lower, 0.5 * (x + full.lower), atol=1e-7)
  np.testing.assert_allclose(half.upper, 0.5 * (x + full.upper), atol=1e-7)
  np.testing.assert_array_equal(none.lower, x)
  np.testing.assert_array_equal(none.upper, x)


def test_patch_boxes_are_a_hashable_jit_static_function():
  assert patches.PatchBoxes(2) == patches.PatchBoxes(2)
  assert hash(patches.PatchBoxes(2)) == hash(patches.PatchBoxes(2))
  x = _images()
  position = jnp.array([[0, 0], [5, 7]])
  build = jax.jit(lambda p: patches.PatchBoxes(2)(x, jnp.array([0, 1]), p))
  box = build(position)
  np.testing.assert_array_equal(
    box.upper, patches.patch_boxes(x, np.array([0, 1]), position, 2).upper
  )


@pytest.mark.parametrize(
  "size, stride, message",
  [
    (0, 1, "integer >= 1"),
    (-2, 1, "integer >= 1"),
    (2.5, 1, "integer"),
    (True, 1, "integer"),
    (8, 1, "does not fit"),
    (2, 0, "stride"),
  ],
)
def test_bad_patches_are_refused_with_the_fix(size, stride, message):
  with pytest.raises(ValueError, match=message):
    patches.patch_positions(7, 9, size, stride)
