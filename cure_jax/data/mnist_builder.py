"""MNIST as a tfds dataset, built from the four original IDX `.gz` files.

tfds's own `mnist` builder cannot be prepared without TensorFlow (it reads
through `tf.io.gfile` and PNG-encodes images with `tf.image`), so the project
brings this builder: it parses the IDX files with NumPy and stores raw uint8
images, in the files' order, as `array_record`.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from cure_jax.data import sources

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10

# The published files, with the MD5 digests of the original distribution.
FILE_NAMES = {
  "train_images": "train-images-idx3-ubyte.gz",
  "train_labels": "train-labels-idx1-ubyte.gz",
  "test_images": "t10k-images-idx3-ubyte.gz",
  "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"
REMOTE_FILES = {
  "train_images": sources.RemoteFile(
    _MIRROR + FILE_NAMES["train_images"], "f68b3c2dcbeaaa9fbdd348bbdeb94873"
  ),
  "train_labels": sources.RemoteFile(
    _MIRROR + FILE_NAMES["train_labels"], "d53e105ee54ea40749a09fcbcd1e9432"
  ),
  "test_images": sources.RemoteFile(
    _MIRROR + FILE_NAMES["test_images"], "9fb629c4189551a2d022fa330f9573f3"
  ),
  "test_labels": sources.RemoteFile(
    _MIRROR + FILE_NAMES["test_labels"], "ec29112dd5afa0611ce80d1b7f02629c"
  ),
}
LOCAL_FILES_HELP = (
  "the four original gzipped IDX files of MNIST ("
  + ", ".join(FILE_NAMES.values())
  + ")"
)

# IDX type codes (third magic byte) -> big-endian NumPy dtype.
_IDX_DTYPES = {
  0x08: np.dtype(">u1"),
  0x09: np.dtype(">i1"),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}


def decode_idx(data: bytes) -> np.ndarray:
  """Decodes an IDX file (LeCun et al.'s MNIST format) into an array.

  Layout: two zero bytes, a type code, the number of dimensions d, then d
  big-endian uint32 sizes, then the values in C order, big-endian. Returns a
  native-endian array; raises ValueError unless `data` is a complete file.
  """
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError("Not an IDX file: it must start with two zero bytes.")
  dtype = _IDX_DTYPES.get(data[2])
  if dtype is None:
    raise ValueError(f"Not an IDX file: unknown type code {data[2]:#04x}.")
  ndim = data[3]
  header_size = 4 + 4 * ndim
  shape = tuple(np.frombuffer(data, ">u4", count=ndim, offset=4).tolist())
  expected_size = header_size + int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected_size:
    raise ValueError(
      f"IDX file of shape {shape} should have {expected_size} bytes, has"
      f" {len(data)}: it is truncated or corrupt."
    )
  values = np.frombuffer(data, dtype, offset=header_size).reshape(shape)
  return values.astype(dtype.newbyteorder("="))


def read_idx_gz(path: epath.PathLike) -> np.ndarray:
  """Reads a gzipped IDX file (ValueError naming the file if it is not one)."""
  path = epath.Path(path)
  try:
    return decode_idx(gzip.decompress(path.read_bytes()))
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"Cannot read MNIST file {path}: {e}") from e


def read_split(
  images_path: epath.PathLike, labels_path: epath.PathLike
) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split: uint8 images [N, 28, 28, 1], int32 labels [N] in [0, 10).

  Raises:
    ValueError: the files have the wrong shapes, disagree in length, or hold
      labels outside [0, 10).
  """
  images = read_idx_gz(images_path)
  labels = read_idx_gz(labels_path)
  if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE[:2]:
    raise ValueError(
      f"{images_path} holds {images.dtype} images of shape"
      f" {images.shape[1:]}, expected uint8 28x28."
    )
  if labels.ndim != 1 or len(labels) != len(images):
    raise ValueError(
      f"{labels_path} holds labels of shape {labels.shape} for"
      f" {len(images)} images in {images_path}."
    )
  if labels.size and labels.max() >= NUM_CLASSES:
    raise ValueError(f"{labels_path} holds labels outside [0, 10).")
  return images[..., None], labels.astype(np.int32)


class MnistSources(NamedTuple):
  """The four original MNIST files."""

  train_images: epath.Path
  train_labels: epath.Path
  test_images: epath.Path
  test_labels: epath.Path


class CureMnist(sources.OriginalFilesBuilder):
  """MNIST handwritten digits: 60,000 train and 10,000 test 28x28 images."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
    "1.0.0": "Raw uint8 images from the original IDX files, in file order.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put {LOCAL_FILES_HELP} in manual_dir."
  REMOTE_FILES = REMOTE_FILES

  def _info(self) -> tfds.core.DatasetInfo:
    return sources.image_label_info(
      self,
      description="The MNIST database of handwritten digits.",
      image_shape=IMAGE_SHAPE,
      label=tfds.features.ClassLabel(num_classes=NUM_CLASSES),
      homepage="http://yann.lecun.com/exdb/mnist/",
    )

  @classmethod
  def find_local_sources(cls, directory: epath.Path) -> MnistSources | None:
    paths = {
      key: epath.Path(directory) / name for key, name in FILE_NAMES.items()
    }
    if not all(path.is_file() for path in paths.values()):
      return None
    return MnistSources(**paths)

  @classmethod
  def sources_from_download(
    cls, paths: Mapping[str, epath.Path]
  ) -> MnistSources:
    return MnistSources(**paths)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    files = self._sources(dl_manager)
    return {
      "train": self._generate_examples(files.train_images, files.train_labels),
      "test": self._generate_examples(files.test_images, files.test_labels),
    }

  def _generate_examples(
    self, images_path: epath.Path, labels_path: epath.Path
  ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    images, labels = read_split(images_path, labels_path)
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image, "label": int(label)}
