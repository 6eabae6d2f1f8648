"""Loading a dataset split into host memory, preparing it with tfds first.

`load_split` returns a split as uint8 NHWC images and int32 labels. The first
time, it prepares the project's tfds dataset (`array_record` files, no
TensorFlow needed) from the original files, taken from, in order:

1. the `data_dir` argument (the config key `data_dir`), else
2. the environment: `CURE_<NAME>_DIR` (`CURE_MNIST_DIR`, `CURE_CIFAR10_DIR`,
   `CURE_TINYIMAGENET_DIR`), else `CURE_DATA_DIR` (one folder for all three),
3. else tfds's manual directory `<tfds_data_dir>/downloads/manual`,
4. else the web (when `download=True`).

A directory named by 1. or 2. must hold the files; when no source is usable
the error, raised within seconds, says which files to put where. The
prepared split is cached next to the tfds dataset as an `.npz` of its arrays.
"""

from __future__ import annotations

import os
import uuid
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from cure_jax.data import (
  cifar10_builder,
  mnist_builder,
  sources,
  tinyimagenet_builder,
)
from cure_jax.data import info as info_lib

DATA_DIR_ENV = "CURE_DATA_DIR"
SPLITS = ("train", "test")
_BUILDERS = {
  "mnist": mnist_builder.CureMnist,
  "cifar10": cifar10_builder.CureCifar10,
  "tinyimagenet": tinyimagenet_builder.CureTinyImagenet,
}
_LOCAL_FILES_HELP = {
  "mnist": mnist_builder.LOCAL_FILES_HELP,
  "cifar10": cifar10_builder.LOCAL_FILES_HELP,
  "tinyimagenet": tinyimagenet_builder.LOCAL_FILES_HELP,
}
_READ_CHUNK = 10_000  # Examples decoded per data-source call.
_PROBE_TIMEOUT_S = 5.0


class Split(NamedTuple):
  """A split in host memory: uint8 images [N, H, W, C], int32 labels [N]."""

  images: np.ndarray
  labels: np.ndarray

  @property
  def num_examples(self) -> int:
    """N (note that `len(split)` is the number of fields, 2)."""
    return len(self.labels)

  def take(self, num_examples: int) -> Split:
    """Returns views of the first `num_examples` <= N examples (ValueError
    if more), e.g. a certification subset."""
    if not 0 <= num_examples <= self.num_examples:
      raise ValueError(
        f"Cannot take {num_examples} of {self.num_examples} examples."
      )
    return Split(self.images[:num_examples], self.labels[:num_examples])


def dataset_env_var(name: str) -> str:
  """Returns the dataset's own directory variable, e.g. 'CURE_MNIST_DIR'."""
  return f"CURE_{name.upper()}_DIR"


def _named_source_dir(
  name: str, data_dir: epath.PathLike | None
) -> tuple[epath.Path | None, str]:
  """Returns (directory, its origin for messages) named by the argument or
  the environment, or (None, '') if none is named."""
  if data_dir is not None:
    return epath.Path(data_dir).expanduser(), "the data_dir argument"
  for var in (dataset_env_var(name), DATA_DIR_ENV):
    if os.environ.get(var):
      return epath.Path(os.environ[var]).expanduser(), f"${var}"
  return None, ""


def _where_to_put_files(name: str) -> str:
  """The message part saying which files to put where, and how to name it."""
  return (
    f"Put {_LOCAL_FILES_HELP[name]} in a directory and pass it as data_dir"
    f" (config key `data_dir`), or set ${dataset_env_var(name)} or"
    f" ${DATA_DIR_ENV} to it."
  )


def _manual_dir(
  name: str,
  builder: sources.OriginalFilesBuilder,
  data_dir: epath.PathLike | None,
) -> epath.Path | None:
  """Returns the local directory holding the original files, or None when
  none is named and tfds's manual directory lacks them (then download).

  Raises:
    DataNotFoundError: a directory was named but lacks the files.
  """
  directory, origin = _named_source_dir(name, data_dir)
  if directory is not None:
    if builder.find_local_sources(directory) is None:
      raise sources.DataNotFoundError(
        f"Dataset {name!r} is not prepared in {builder.data_dir_root} and"
        f" its original files are not in {directory} (from {origin})."
        f" {_where_to_put_files(name)}"
      )
    return directory
  default_dir = epath.Path(builder.data_dir_root) / "downloads" / "manual"
  if builder.find_local_sources(default_dir) is not None:
    return default_dir
  return None


def _builder(name: str, tfds_data_dir) -> tfds.core.DatasetBuilder:
  return _BUILDERS[name](data_dir=tfds_data_dir, file_format="array_record")


def prepare(
  name: str,
  *,
  data_dir: epath.PathLike | None = None,
  tfds_data_dir: epath.PathLike | None = None,
  download: bool = True,
) -> tfds.core.DatasetBuilder:
  """Returns the dataset's tfds builder, preparing the dataset if needed.

  Preparation is done once per `tfds_data_dir`. Processes that prepare the
  same dataset at once (hosts sharing a file system) each build it, and all
  but the first to finish use the first one's; preparing before launching
  (`python -m cure_jax.data`) saves the duplicate work.

  `data_dir` and its fallbacks are described in the module doc;
  `tfds_data_dir` None is tfds's default ($TFDS_DATA_DIR or
  ~/tensorflow_datasets). Read the returned builder with `as_data_source`.

  Raises:
    ValueError: the name is unknown.
    DataNotFoundError: no local copy and no download possible; raised
      before any long network wait.
  """
  info_lib.check_dataset_name(name)
  builder = _builder(name, tfds_data_dir)
  # (is_prepared alone warns about a missing folder.)
  if epath.Path(builder.data_path).exists() and builder.is_prepared():
    return builder
  manual_dir = _manual_dir(name, builder, data_dir)
  if manual_dir is None:
    urls = [f.url for f in builder.REMOTE_FILES.values()]
    if not download:
      raise sources.DataNotFoundError(
        f"Dataset {name!r} is not prepared in {builder.data_dir_root}, no"
        f" directory of original files is named, and download=False."
        f" {_where_to_put_files(name)}"
      )
    unreachable = sources.unreachable_hosts(urls, _PROBE_TIMEOUT_S)
    if unreachable:
      raise sources.DataNotFoundError(
        f"Dataset {name!r} is not prepared in {builder.data_dir_root} and"
        f" cannot be downloaded: no answer from {', '.join(unreachable)}"
        f" within {_PROBE_TIMEOUT_S:g} s (no network?). Download"
        f" {', '.join(urls)} elsewhere, or use a local copy. "
        + _where_to_put_files(name)
      )
  try:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False
      )
    )
  except FileExistsError:
    # tfds writes into a private folder and renames it into place at the
    # end; the rename fails when another process (a second host on a shared
    # file system, a second job) prepared the same dataset meanwhile. Use it.
    fresh = _builder(name, tfds_data_dir)
    if not fresh.is_prepared():
      raise
    return fresh
  return builder


def _read_data_source(builder: tfds.core.DatasetBuilder, split: str) -> Split:
  """Reads a whole prepared split, in dataset order, via `tfds.data_source`."""
  source = builder.as_data_source(split=split)
  image_shape = builder.info.features["image"].shape
  images = np.empty((len(source), *image_shape), np.uint8)
  labels = np.empty((len(source),), np.int32)
  for start in range(0, len(source), _READ_CHUNK):
    stop = min(start + _READ_CHUNK, len(source))
    examples = source.__getitems__(range(start, stop))  # A batched read.
    images[start:stop] = [example["image"] for example in examples]
    labels[start:stop] = [example["label"] for example in examples]
  return Split(images, labels)


def _cache_path(builder: tfds.core.DatasetBuilder, split: str) -> epath.Path:
  """The `.npz` cache of a split, inside the prepared dataset's version dir."""
  return epath.Path(builder.data_path) / f"{split}.arrays.npz"


def _load_cache(builder: tfds.core.DatasetBuilder, split: str) -> Split | None:
  """Returns the cached split, or None if absent or its shapes or dtypes do
  not match the dataset's."""
  path = _cache_path(builder, split)
  if not path.exists():
    return None
  with path.open("rb") as f, np.load(f) as arrays:
    cached = Split(arrays["images"], arrays["labels"])
  expected_images = (
    builder.info.splits[split].num_examples,
    *builder.info.features["image"].shape,
  )
  if (
    cached.images.shape != expected_images
    or cached.images.dtype != np.uint8
    or cached.labels.shape != expected_images[:1]
    or cached.labels.dtype != np.int32
  ):
    logging.warning("Ignoring %s: it does not match the dataset.", path)
    return None
  return cached


def _save_cache(
  builder: tfds.core.DatasetBuilder, split: str, data: Split
) -> None:
  """Writes the split's cache atomically; a read-only location is skipped."""
  path = _cache_path(builder, split)
  partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
  try:
    with partial.open("wb") as f:
      np.savez(f, images=data.images, labels=data.labels)
    partial.replace(path)  # Atomic: readers never see a partial file.
  except OSError as e:
    logging.warning("Not caching %s arrays at %s: %s", split, path, e)
    partial.unlink(missing_ok=True)


def load_split(
  name: str,
  split: str,
  *,
  data_dir: epath.PathLike | None = None,
  tfds_data_dir: epath.PathLike | None = None,
  download: bool = True,
  cache: bool = True,
) -> Split:
  """Loads a dataset split into host memory, preparing the dataset if needed.

  `split` is 'train' or 'test' (TinyImageNet's test split is its labelled
  validation set); `data_dir`, `tfds_data_dir` and `download` only serve
  `prepare`; `cache` reads and writes the split's `.npz` array cache.
  Returns uint8 images [N, H, W, C] and int32 labels [N] in file order.

  Raises:
    ValueError: unknown name or split.
    DataNotFoundError: the dataset is not prepared and cannot be (see
      `prepare`).
  """
  info_lib.check_dataset_name(name)
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; choose one of {SPLITS}.")
  builder = prepare(
    name, data_dir=data_dir, tfds_data_dir=tfds_data_dir, download=download
  )
  if cache and (cached := _load_cache(builder, split)) is not None:
    return cached
  data = _read_data_source(builder, split)
  if cache:
    _save_cache(builder, split, data)
  return data
