"""CIFAR-10 as a tfds dataset, built from the original python-version archive.

The source is `cifar-10-python.tar.gz` or its extracted `cifar-10-batches-py/`
folder: six pickled batches (`data_batch_1..5`, `test_batch`), each a dict
with `data`, a uint8 [n, 3072] array whose rows hold the 1024 red, then
green, then blue values of a 32x32 image in row-major order, and `labels`.
(tfds's own `cifar10` builder reads the binary version and PNG-encodes with
TensorFlow, so it cannot be prepared without TensorFlow.)

The batches are pickles, which can run arbitrary code when loaded; they are
read with an unpickler that only accepts what the CIFAR batches contain.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from cure_jax.data import sources

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
CLASS_NAMES = (
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
)
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
SPLIT_BATCHES = {
  "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
  "test": ("test_batch",),
}
REMOTE_FILES = {
  "archive": sources.RemoteFile(
    "https://www.cs.toronto.edu/~kriz/" + ARCHIVE_NAME,
    "c58f30108f718f92721af3b95e74349a",
  ),
}
LOCAL_FILES_HELP = (
  f"the CIFAR-10 python-version archive {ARCHIVE_NAME} or its extracted"
  f" folder {FOLDER_NAME}/ (data_batch_1 ... data_batch_5, test_batch)"
)

# NumPy's array-reconstruction function, whatever its module is called.
_RECONSTRUCT_ARRAY = np.zeros(0).__reduce__()[0]
# The only globals a CIFAR batch pickle names: that function (NumPy 1 and 2
# module names), ndarray, dtype and the codec of protocol-2 bytes.
_ALLOWED_GLOBALS = {
  ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT_ARRAY,
  ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT_ARRAY,
  ("numpy", "ndarray"): np.ndarray,
  ("numpy", "dtype"): np.dtype,
  ("_codecs", "encode"): codecs.encode,
}


class _BatchUnpickler(pickle.Unpickler):
  """Unpickles CIFAR batches only: refuses any other global (no code runs)."""

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
        f"A CIFAR-10 batch may not refer to {module}.{name}: the file is"
        " not an original CIFAR-10 python batch."
      ) from None


def decode_batch(data: bytes) -> tuple[np.ndarray, np.ndarray]:
  """Decodes one pickled CIFAR-10 python batch (Python 2 pickle, bytes keys).

  Returns uint8 images [n, 32, 32, 3] (NHWC) and int32 labels [n] in [0, 10);
  raises ValueError if the bytes are not a CIFAR-10 batch.
  """
  try:
    batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    rows = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
  except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as e:
    raise ValueError(f"Not a CIFAR-10 python batch: {e!r}") from e
  if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
    raise ValueError(
      f"A CIFAR-10 batch holds uint8 rows of 3072 values, got {rows.dtype}"
      f" {rows.shape}."
    )
  if (
    labels.shape != (len(rows),)
    or labels.min(initial=0) < 0
    or (labels.max(initial=0) >= NUM_CLASSES)
  ):
    raise ValueError(
      f"A CIFAR-10 batch holds one label in [0, 10) per image, got labels"
      f" of shape {labels.shape} for {len(rows)} images."
    )
  # Row = [R (32x32), G (32x32), B (32x32)]: CHW -> HWC.
  images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


class CifarSource(NamedTuple):
  """A local copy of the batches: the `.tar.gz` archive or extracted folder."""

  path: epath.Path
  is_archive: bool


def read_batch_files(
  source: CifarSource, names: Sequence[str]
) -> dict[str, bytes]:
  """Returns {name: bytes} of the named batches (FileNotFoundError if missing).

  The archive is gzip-compressed, so it is read in one sequential pass.
  """
  if not source.is_archive:
    return {name: (source.path / name).read_bytes() for name in names}
  found = {}
  with tarfile.open(source.path, "r:gz") as archive:
    for member in archive:
      name = member.name.rsplit("/", 1)[-1]
      if member.isfile() and name in names and name not in found:
        found[name] = archive.extractfile(member).read()
  missing = sorted(set(names) - set(found))
  if missing:
    raise FileNotFoundError(f"{source.path} lacks the batches {missing}.")
  return found


def read_split(
  source: CifarSource, split: str
) -> tuple[np.ndarray, np.ndarray]:
  """Reads 'train' or 'test': uint8 images [N, 32, 32, 3], int32 labels [N],
  batches concatenated in file order. ValueError names a malformed batch."""
  names = SPLIT_BATCHES[split]
  files = read_batch_files(source, names)
  decoded = []
  for name in names:
    try:
      decoded.append(decode_batch(files[name]))
    except ValueError as e:
      raise ValueError(f"{name} in {source.path}: {e}") from e
  images, labels = zip(*decoded)
  return np.concatenate(images), np.concatenate(labels)


class CureCifar10(sources.OriginalFilesBuilder):
  """CIFAR-10: 50,000 train and 10,000 test 32x32 colour images, 10 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
    "1.0.0": "Raw uint8 images from the python batches, in file order.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put {LOCAL_FILES_HELP} in manual_dir."
  REMOTE_FILES = REMOTE_FILES

  def _info(self) -> tfds.core.DatasetInfo:
    return sources.image_label_info(
      self,
      description="CIFAR-10: 60,000 32x32 colour images in 10 classes.",
      image_shape=IMAGE_SHAPE,
      label=tfds.features.ClassLabel(names=CLASS_NAMES),
      homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    )

  @classmethod
  def find_local_sources(cls, directory: epath.Path) -> CifarSource | None:
    directory = epath.Path(directory)
    if (directory / ARCHIVE_NAME).is_file():
      return CifarSource(directory / ARCHIVE_NAME, is_archive=True)
    all_batches = SPLIT_BATCHES["train"] + SPLIT_BATCHES["test"]
    for folder in (directory / FOLDER_NAME, directory):
      if all((folder / name).is_file() for name in all_batches):
        return CifarSource(folder, is_archive=False)
    return None

  @classmethod
  def sources_from_download(
    cls, paths: Mapping[str, epath.Path]
  ) -> CifarSource:
    return CifarSource(paths["archive"], is_archive=True)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    source = self._sources(dl_manager)
    return {
      split: self._generate_examples(source, split) for split in SPLIT_BATCHES
    }

  def _generate_examples(
    self, source: CifarSource, split: str
  ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    images, labels = read_split(source, split)
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image, "label": int(label)}
