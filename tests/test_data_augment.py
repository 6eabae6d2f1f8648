"""Tests for cure_jax.data.augment: exact crops and flips of made-up images."""

import numpy as np
import pytest

from cure_jax.data import augment

# 3x3 single-channel image with values 0..8; with 1 pixel of edge padding:
#   0 0 1 2 2
#   0 0 1 2 2
#   3 3 4 5 5
#   6 6 7 8 8
#   6 6 7 8 8
_IMAGE = np.arange(9, dtype=np.uint8).reshape(1, 3, 3, 1)
_PAD_1 = augment.Augmentation(random_flip=True, pad=1)


def _draws(offsets, flips):
  return augment.AugmentationDraws(np.array(offsets), np.array(flips))


@pytest.mark.parametrize(
  "offset, flip, expected",
  [
    ((0, 0), False, [[0, 0, 1], [0, 0, 1], [3, 3, 4]]),
    ((2, 1), False, [[3, 4, 5], [6, 7, 8], [6, 7, 8]]),
    ((2, 1), True, [[5, 4, 3], [8, 7, 6], [8, 7, 6]]),
    ((1, 1), False, [[0, 1, 2], [3, 4, 5], [6, 7, 8]]),
    ((1, 2), True, [[2, 2, 1], [5, 5, 4], [8, 8, 7]]),
  ],
)
def test_edge_pad_crop_flip_exact(offset, flip, expected):
  out = augment.apply_augmentation(_IMAGE, _PAD_1, _draws([offset], [flip]))
  np.testing.assert_array_equal(out[0, :, :, 0], expected)


def test_constant_padding_is_zero():
  zero_pad = _PAD_1._replace(pad_mode="constant")
  out = augment.apply_augmentation(
    _IMAGE + 1, zero_pad, _draws([(0, 0)], [False])
  )
  np.testing.assert_array_equal(
    out[0, :, :, 0], [[0, 0, 0], [0, 1, 2], [0, 4, 5]]
  )


def test_crop_without_padding_and_per_image_draws():
  images = np.arange(2 * 4 * 4 * 2, dtype=np.uint8).reshape(2, 4, 4, 2)
  crop = augment.Augmentation(random_flip=True, crop_size=2)
  out = augment.apply_augmentation(
    images, crop, _draws([(1, 2), (0, 0)], [False, True])
  )
  np.testing.assert_array_equal(out[0], images[0, 1:3, 2:4])
  np.testing.assert_array_equal(out[1], images[1, 0:2, 1::-1])


def test_identity_augmentation_returns_the_images():
  images = np.arange(2 * 3 * 3 * 1, dtype=np.uint8).reshape(2, 3, 3, 1)
  identity = augment.Augmentation()
  draws = augment.sample_draws(np.random.default_rng(0), 2, 3, identity)
  np.testing.assert_array_equal(
    augment.apply_augmentation(images, identity, draws), images
  )


def test_sample_draws_cover_the_valid_range_only():
  draws = augment.sample_draws(
    np.random.default_rng(0),
    4000,
    32,
    augment.Augmentation(random_flip=True, pad=2),
  )
  # Crop 32 out of 36: offsets 0..4 on both axes, each about 1/5 of draws.
  for axis in range(2):
    counts = np.bincount(draws.offsets[:, axis], minlength=5)
    assert len(counts) == 5 and counts.min() > 650
  assert 0.45 < draws.flips.mean() < 0.55
  no_flip = augment.sample_draws(
    np.random.default_rng(0), 100, 32, augment.Augmentation(pad=2)
  )
  assert not no_flip.flips.any()


def test_output_size():
  assert augment.output_size(augment.Augmentation(pad=2), 32) == 32
  assert augment.output_size(augment.Augmentation(crop_size=56), 64) == 56


@pytest.mark.parametrize(
  "augmentation, message",
  [
    (augment.Augmentation(crop_size=37, pad=2), r"crop_size 37 must be in"),
    (augment.Augmentation(pad=-1), "pad must be >= 0"),
    (augment.Augmentation(pad=1, pad_mode="wrap"), "pad_mode must be one of"),
  ],
)
def test_invalid_augmentations_are_rejected(augmentation, message):
  with pytest.raises(ValueError, match=message):
    augment.output_size(augmentation, 32)


def test_apply_rejects_mismatched_draws_and_non_square_images():
  with pytest.raises(ValueError, match="do not fit a batch of 1"):
    augment.apply_augmentation(
      _IMAGE, _PAD_1, _draws([(0, 0), (0, 0)], [False, False])
    )
  with pytest.raises(ValueError, match="square"):
    augment.apply_augmentation(
      np.zeros((1, 3, 4, 1), np.uint8), _PAD_1, _draws([(0, 0)], [False])
    )


def test_center_crop_exact():
  images = np.arange(4 * 4, dtype=np.uint8).reshape(1, 4, 4, 1)
  np.testing.assert_array_equal(
    augment.center_crop(images, 2), images[:, 1:3, 1:3]
  )
  tiny_imagenet = np.zeros((1, 64, 64, 3), np.uint8)
  tiny_imagenet[0, 4, 4] = 1  # The crop's top-left corner (torchvision's).
  assert augment.center_crop(tiny_imagenet, 56)[0, 0, 0, 0] == 1
  with pytest.raises(ValueError, match="Cannot crop 5x5 out of 4x4"):
    augment.center_crop(images, 5)


def test_to_unit_float_is_division_by_255():
  pixels = np.array([0, 51, 255], np.uint8)
  np.testing.assert_array_equal(
    augment.to_unit_float(pixels), np.float32([0.0, 0.2, 1.0])
  )
  assert augment.to_unit_float(pixels).dtype == np.float32
  with pytest.raises(TypeError, match="Expected uint8"):
    augment.to_unit_float(pixels.astype(np.float32))
