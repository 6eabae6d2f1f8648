"""A config's dataset: where it lives and which examples a run uses.

Training, certification and the command-line tools all read
``config.dataset`` (name, data_dir, tfds_data_dir, download, train_examples)
through these functions.
"""

import os

import ml_collections
import numpy as np

from cure_jax.data import info as info_lib
from cure_jax.data import loading

TFDS_DATA_DIR_ENV = "TFDS_DATA_DIR"
SUBSET_STREAM = 2  # seed stream of the training subset (batching uses 0, 1)


def tfds_data_dir(config: ml_collections.ConfigDict) -> str | None:
  """Where prepared datasets live: the config, else $TFDS_DATA_DIR, else None.

  tfds reads $TFDS_DATA_DIR once, when it is imported; reading it here, at
  call time, lets a caller (or a test) redirect the cache at any time.
  """
  return (
    config.dataset.tfds_data_dir or os.environ.get(TFDS_DATA_DIR_ENV) or None
  )


def load_config_split(
  config: ml_collections.ConfigDict, split: str
) -> loading.Split:
  """The ``split`` ('train' or 'test') of ``config.dataset``, whole.

  Raises:
    DataNotFoundError: the dataset is not prepared and its files are neither
      local nor downloadable (within seconds, naming the files and settings).
  """
  return loading.load_split(
    config.dataset.name,
    split,
    data_dir=config.dataset.data_dir or None,
    tfds_data_dir=tfds_data_dir(config),
    download=config.dataset.download,
  )


def load_datasets(config: ml_collections.ConfigDict):
  """(info, train split, test split) of ``config.dataset``.

  The training split is ``config.dataset.train_examples`` random examples
  when that is set (`train_subset`).

  Raises:
    DataNotFoundError: see `load_config_split`.
  """
  info = info_lib.dataset_info(config.dataset.name)
  train = load_config_split(config, "train")
  if config.dataset.train_examples:
    train = train_subset(train, config.dataset.train_examples, config.seed)
  return info, train, load_config_split(config, "test")


def train_subset(
  split: loading.Split, num_examples: int, seed: int
) -> loading.Split:
  """A fixed random subset of ``num_examples`` in [1, N] examples, in dataset
  order, a pure function of ``seed`` (ValueError outside [1, N]).

  Random rather than the leading examples: TinyImageNet's training split is
  sorted by class, so its first examples cover only a few classes.
  """
  if not 0 < num_examples <= split.num_examples:
    raise ValueError(
      f"dataset.train_examples must be in [1, {split.num_examples}] (the "
      f"split's size), or 0 for all of it; got {num_examples}."
    )
  rng = np.random.default_rng([seed, SUBSET_STREAM])
  indices = np.sort(rng.choice(split.num_examples, num_examples, replace=False))
  return loading.Split(split.images[indices], split.labels[indices])
