"""Datasets for certified training: MNIST, CIFAR-10 and TinyImageNet.

Images live in host memory as uint8 NHWC and reach the model as float32 in
[0, 1] (normalization belongs to the model, so that perturbation radii are in
pixel space). Datasets are prepared once as tfds `array_record` datasets by
the project's builders from the original files, offline or downloaded, with
no TensorFlow needed; batches are pure functions of (seed, step).

Typical use:

  train = data.load_split('cifar10', 'train', data_dir=config.data_dir)
  info = data.dataset_info('cifar10')
  batch = data.train_batch(train, step, global_batch_size=128, seed=0,
                           augmentation=info.train_augmentation,
                           process_index=jax.process_index(),
                           process_count=jax.process_count())
"""

from cure_jax.data.augment import (
  Augmentation,
  AugmentationDraws,
  apply_augmentation,
  center_crop,
  sample_draws,
  to_unit_float,
)
from cure_jax.data.batching import (
  Batch,
  EvalBatch,
  epoch_permutation,
  eval_batches,
  num_eval_batches,
  steps_per_epoch,
  train_batch,
)
from cure_jax.data.cifar10_builder import CureCifar10
from cure_jax.data.from_config import (
  load_config_split,
  load_datasets,
  tfds_data_dir,
  train_subset,
)
from cure_jax.data.info import DATASET_NAMES, DatasetInfo, dataset_info
from cure_jax.data.loading import (
  DATA_DIR_ENV,
  Split,
  dataset_env_var,
  load_split,
  prepare,
)
from cure_jax.data.mnist_builder import CureMnist
from cure_jax.data.sources import DataNotFoundError
from cure_jax.data.tinyimagenet_builder import CureTinyImagenet
