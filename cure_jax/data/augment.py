"""Training augmentations (pad, random crop, horizontal flip) and centre crops.

Augmentations are split into drawing the random choices (`sample_draws`,
from an explicit NumPy generator) and applying them (`apply_augmentation`, a
pure function), so that a batch's augmentation is a deterministic function of
the generator's seed and can be checked exactly on hand-made images.

Reference settings (SABR/CURE code): CIFAR-10 pads 2 pixels by edge
replication, crops back to 32x32 and flips; TinyImageNet crops 56x56 out of
64x64 and flips, and evaluates on the centre 56x56 crop.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

_PAD_MODES = ("edge", "constant")


class Augmentation(NamedTuple):
  """A random pad-crop-flip augmentation (the identity by default).

  Pads `pad` pixels per side ('edge' replicates the border, as the reference
  code; 'constant' is zeros), crops a `crop_size` square (None: the image's
  size) at a uniform position, then mirrors it with probability 1/2 if
  `random_flip`.
  """

  random_flip: bool = False
  pad: int = 0
  pad_mode: str = "edge"
  crop_size: int | None = None


class AugmentationDraws(NamedTuple):
  """A batch's random choices: `offsets` int [B, 2], each crop's top-left
  (row, column) in the padded image; `flips` bool [B]."""

  offsets: np.ndarray
  flips: np.ndarray


def output_size(augmentation: Augmentation, image_size: int) -> int:
  """Returns the side of augmented images: `crop_size`, else `image_size`.

  Raises:
    ValueError: invalid settings, or the crop exceeds the padded image.
  """
  if augmentation.pad < 0:
    raise ValueError(f"pad must be >= 0, got {augmentation.pad}.")
  if augmentation.pad_mode not in _PAD_MODES:
    raise ValueError(
      f"pad_mode must be one of {_PAD_MODES}, got {augmentation.pad_mode!r}."
    )
  size = augmentation.crop_size or image_size
  padded = image_size + 2 * augmentation.pad
  if not 0 < size <= padded:
    raise ValueError(
      f"crop_size {size} must be in [1, {padded}] (image {image_size} +"
      f" 2 * pad {augmentation.pad})."
    )
  return size


def sample_draws(
  rng: np.random.Generator,
  batch_size: int,
  image_size: int,
  augmentation: Augmentation,
) -> AugmentationDraws:
  """Draws offsets uniform in [0, image_size + 2 pad - crop_size] per axis
  and flips with probability 1/2 (all False without `random_flip`)."""
  size = output_size(augmentation, image_size)
  max_offset = image_size + 2 * augmentation.pad - size
  offsets = rng.integers(0, max_offset + 1, size=(batch_size, 2))
  flips = rng.random(batch_size) < 0.5
  return AugmentationDraws(offsets, flips & augmentation.random_flip)


def apply_augmentation(
  images: np.ndarray,
  augmentation: Augmentation,
  draws: AugmentationDraws,
) -> np.ndarray:
  """Pads, crops and flips square [B, H, H, C] images (any dtype) as drawn.

  Returns [B, S, S, C], S = `output_size(augmentation, H)`, same dtype:
  out[b, i, j] = padded[b, r_b + i, c_b + (S - 1 - j if flip_b else j)],
  (r_b, c_b) = draws.offsets[b].

  Raises:
    ValueError: the images are not square or the draws do not match them.
  """
  batch_size, height, width = images.shape[:3]
  if height != width:
    raise ValueError(f"Images must be square, got {height}x{width}.")
  if draws.offsets.shape != (batch_size, 2) or draws.flips.shape != (
    batch_size,
  ):
    raise ValueError(
      f"Draws for {draws.offsets.shape[0]} images do not fit a batch of"
      f" {batch_size}."
    )
  size = output_size(augmentation, height)
  pad = augmentation.pad
  padded = np.pad(
    images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=augmentation.pad_mode
  )
  span = np.arange(size)
  rows = draws.offsets[:, :1] + span  # [B, S]
  # A flip reads the crop's columns right to left.
  cols = draws.offsets[:, 1:] + np.where(
    draws.flips[:, None], size - 1 - span, span
  )
  batch = np.arange(batch_size)[:, None, None]
  return padded[batch, rows[:, :, None], cols[:, None, :]]


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
  """Returns a view [B, size, size, C] of the centre square of [B, H, W, C].

  The top-left corner is ((H - size) // 2, (W - size) // 2), as torchvision's
  CenterCrop for even differences. Raises ValueError if the crop is too large.
  """
  height, width = images.shape[1:3]
  if not 0 < size <= min(height, width):
    raise ValueError(f"Cannot crop {size}x{size} out of {height}x{width}.")
  top, left = (height - size) // 2, (width - size) // 2
  return images[:, top : top + size, left : left + size]


def to_unit_float(images: np.ndarray) -> np.ndarray:
  """Maps uint8 pixels to float32 x / 255 in [0, 1]; TypeError if not uint8."""
  if images.dtype != np.uint8:
    raise TypeError(f"Expected uint8 images, got {images.dtype}.")
  return images.astype(np.float32) / np.float32(255)
