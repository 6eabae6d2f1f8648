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

from cure_jax.data.augment import apply_augmentation
from cure_jax.data.augment import Augmentation
from cure_jax.data.augment import AugmentationDraws
from cure_jax.data.augment import center_crop
from cure_jax.data.augment import sample_draws
from cure_jax.data.augment import to_unit_float
from cure_jax.data.batching import Batch
from cure_jax.data.batching import epoch_permutation
from cure_jax.data.batching import eval_batches
from cure_jax.data.batching import EvalBatch
from cure_jax.data.batching import num_eval_batches
from cure_jax.data.batching import steps_per_epoch
from cure_jax.data.batching import train_batch
from cure_jax.data.cifar10_builder import CureCifar10
from cure_jax.data.info import DATASET_NAMES
from cure_jax.data.info import dataset_info
from cure_jax.data.info import DatasetInfo
from cure_jax.data.loading import DATA_DIR_ENV
from cure_jax.data.loading import dataset_env_var
from cure_jax.data.loading import load_split
from cure_jax.data.loading import prepare
from cure_jax.data.loading import Split
from cure_jax.data.mnist_builder import CureMnist
from cure_jax.data.sources import DataNotFoundError
from cure_jax.data.tinyimagenet_builder import CureTinyImagenet
