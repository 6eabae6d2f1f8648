"""Tests for cure_jax.data.info: the datasets' static facts."""

import pytest

from cure_jax.data import augment, info


@pytest.mark.parametrize(
  "name, num_classes, image_shape, input_shape",
  [
    ("mnist", 10, (28, 28, 1), (28, 28, 1)),
    ("cifar10", 10, (32, 32, 3), (32, 32, 3)),
    ("tinyimagenet", 200, (64, 64, 3), (56, 56, 3)),
  ],
)
def test_facts(name, num_classes, image_shape, input_shape):
  facts = info.dataset_info(name)
  assert facts.name == name and facts.num_classes == num_classes
  assert facts.image_shape == image_shape
  assert facts.input_shape == input_shape


@pytest.mark.parametrize("name", info.DATASET_NAMES)
def test_train_and_eval_crops_both_give_the_input_shape(name):
  facts = info.dataset_info(name)
  height = facts.image_shape[0]
  assert (
    augment.output_size(facts.train_augmentation, height)
    == (facts.input_shape[0])
  )
  assert (facts.eval_crop or height) == facts.input_shape[0]


def test_reference_augmentations():
  cifar = info.dataset_info("cifar10").train_augmentation
  assert cifar == augment.Augmentation(random_flip=True, pad=2, pad_mode="edge")
  assert info.dataset_info("mnist").train_augmentation == (
    augment.Augmentation()
  )
  assert info.dataset_info("tinyimagenet").eval_crop == 56


def test_split_sizes():
  sizes = {
    name: (info.dataset_info(name).num_train, info.dataset_info(name).num_test)
    for name in info.DATASET_NAMES
  }
  assert sizes == {
    "mnist": (60_000, 10_000),
    "cifar10": (50_000, 10_000),
    "tinyimagenet": (100_000, 10_000),
  }


def test_unknown_name():
  with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
    info.dataset_info("imagenet")
