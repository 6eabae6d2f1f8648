"""Static facts about the supported datasets."""

from __future__ import annotations

from typing import NamedTuple

from cure_jax.data import augment


class DatasetInfo(NamedTuple):
  """What a model and a training loop need to know about a dataset.

  Attributes:
    name: the dataset's name in this package ('mnist', 'cifar10',
      'tinyimagenet').
    num_classes: number of labels K.
    image_shape: (H, W, C) of the stored uint8 images.
    input_shape: (H, W, C) of the model's input: after the training crop and
      the evaluation crop.
    num_train: size of the train split.
    num_test: size of the test split.
    train_augmentation: the reference augmentation for training.
    eval_crop: side of the evaluation centre crop, or None for none.
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
  """Raises ValueError, listing the valid names, if `name` is unknown.

  Args:
    name: a dataset name.
  """
  if name not in _INFOS:
    raise ValueError(
      f"Unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}."
    )


def dataset_info(name: str) -> DatasetInfo:
  """Returns the static facts about a dataset.

  Args:
    name: 'mnist', 'cifar10' or 'tinyimagenet'.

  Returns:
    Its `DatasetInfo`.

  Raises:
    ValueError: the name is unknown.
  """
  check_dataset_name(name)
  return _INFOS[name]
