"""Static facts about the supported datasets."""

from __future__ import annotations

from typing import NamedTuple

from cure_jax.data import augment


class DatasetInfo(NamedTuple):
  """What a model and a training loop need to know about a dataset.

  `image_shape` is the stored uint8 (H, W, C); `input_shape` the model's
  input, after the training crop and the evaluation centre crop `eval_crop`.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  input_shape: tuple[int, int, int]
  num_train: int
  num_test: int
  train_augmentation: augment.Augmentation
  eval_crop: int | None


_INFOS = {
  "mnist": DatasetInfo(
    name="mnist",
    num_classes=10,
    image_shape=(28, 28, 1),
    input_shape=(28, 28, 1),
    num_train=60_000,
    num_test=10_000,
    train_augmentation=augment.Augmentation(),
    eval_crop=None,
  ),
  "cifar10": DatasetInfo(
    name="cifar10",
    num_classes=10,
    image_shape=(32, 32, 3),
    input_shape=(32, 32, 3),
    num_train=50_000,
    num_test=10_000,
    train_augmentation=augment.Augmentation(
      random_flip=True, pad=2, pad_mode="edge"
    ),
    eval_crop=None,
  ),
  "tinyimagenet": DatasetInfo(
    name="tinyimagenet",
    num_classes=200,
    image_shape=(64, 64, 3),
    input_shape=(56, 56, 3),
    num_train=100_000,
    num_test=10_000,
    train_augmentation=augment.Augmentation(random_flip=True, crop_size=56),
    eval_crop=56,
  ),
}

DATASET_NAMES = tuple(_INFOS)


def check_dataset_name(name: str) -> None:
  """Raises ValueError, listing the valid names, if `name` is unknown."""
  if name not in _INFOS:
    raise ValueError(
      f"Unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}."
    )


def dataset_info(name: str) -> DatasetInfo:
  """Returns the `DatasetInfo` of a dataset (ValueError if unknown)."""
  check_dataset_name(name)
  return _INFOS[name]
