"""TinyImageNet (200 classes, 64x64) as a tfds dataset; tfds has no builder.

The source is the original `tiny-imagenet-200.zip` or its extracted
`tiny-imagenet-200/` folder:

  wnids.txt                                 the 200 class ids (WordNet ids)
  train/<wnid>/images/<wnid>_<k>.JPEG       500 training images per class
  val/images/val_<k>.JPEG                   10,000 validation images
  val/val_annotations.txt                   '<file>\\t<wnid>\\t<box>' lines

The labelled validation set is the `test` split (the official test set has no
labels), as in the reference code. Labels index the SORTED wnids, as
torchvision's `ImageFolder` (used by the reference code) numbers them.
Train examples are ordered by (wnid, file name), test examples as listed in
`val_annotations.txt`. JPEGs are decoded once, with Pillow, to RGB uint8.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from cure_jax.data import sources

IMAGE_SHAPE = (64, 64, 3)
NUM_CLASSES = 200
ARCHIVE_NAME = "tiny-imagenet-200.zip"
FOLDER_NAME = "tiny-imagenet-200"
REMOTE_FILES = {
  "archive": sources.RemoteFile(
    "http://cs231n.stanford.edu/" + ARCHIVE_NAME,
    "90528d7ca1a48142e341f4ef8d21d0de",
  ),
}
LOCAL_FILES_HELP = (
  f"the TinyImageNet archive {ARCHIVE_NAME} or its extracted folder"
  f" {FOLDER_NAME}/ (wnids.txt, train/<wnid>/images/*.JPEG, val/images/"
  " and val/val_annotations.txt)"
)

_WNIDS_FILE = "wnids.txt"
_VAL_ANNOTATIONS_FILE = "val/val_annotations.txt"
_TRAIN_IMAGE = re.compile(r"train/([^/]+)/images/([^/]+\.jpe?g)", re.IGNORECASE)


class TinyImagenetSource(NamedTuple):
  """A local copy: the `.zip` archive or the folder holding `wnids.txt`."""

  path: epath.Path
  is_archive: bool


class FileTree(NamedTuple):
  """`read(relative path) -> bytes` and every file's '/'-separated `paths`."""

  read: Callable[[str], bytes]
  paths: Sequence[str]


@contextlib.contextmanager
def open_tree(source: TinyImagenetSource) -> Iterator[FileTree]:
  """Opens the archive or folder for reading.

  In the archive, the root is the folder holding `wnids.txt` (normally
  `tiny-imagenet-200/`); FileNotFoundError if there is none.
  """
  if not source.is_archive:
    root = os.fspath(source.path)
    paths = [
      os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
      for subtree in ("train", "val")
      for folder, _, names in os.walk(os.path.join(root, subtree))
      for name in names
    ]
    yield FileTree(lambda path: (source.path / path).read_bytes(), paths)
    return
  with zipfile.ZipFile(source.path) as archive:
    roots = [
      name[: -len(_WNIDS_FILE)]
      for name in archive.namelist()
      if name.rsplit("/", 1)[-1] == _WNIDS_FILE
    ]
    if not roots:
      raise FileNotFoundError(f"{source.path} holds no {_WNIDS_FILE}.")
    root = min(roots, key=len)
    paths = [
      name[len(root) :]
      for name in archive.namelist()
      if name.startswith(root) and not name.endswith("/")
    ]
    yield FileTree(lambda path: archive.read(root + path), paths)


def read_class_ids(tree: FileTree) -> list[str]:
  """Returns the 200 class ids (wnids), sorted: label i is the i-th.

  Raises ValueError unless `wnids.txt` lists 200 distinct ids.
  """
  wnids = tree.read(_WNIDS_FILE).decode("ascii").split()
  if len(set(wnids)) != NUM_CLASSES or len(wnids) != NUM_CLASSES:
    raise ValueError(
      f"{_WNIDS_FILE} must list {NUM_CLASSES} distinct class ids, lists"
      f" {len(wnids)} ({len(set(wnids))} distinct)."
    )
  return sorted(wnids)


def list_split(
  tree: FileTree, split: str, wnids: Sequence[str]
) -> list[tuple[str, int]]:
  """Lists (relative image path, label) of 'train' or 'test' (the validation
  images) in dataset order; `wnids` sorted as by `read_class_ids`.

  Raises:
    ValueError: an image belongs to a class not in `wnids.txt`, or an
      annotation line is malformed.
  """
  label_of = {wnid: label for label, wnid in enumerate(wnids)}

  def label(wnid: str, where: str) -> int:
    if wnid not in label_of:
      raise ValueError(f"{where}: class {wnid!r} is not in {_WNIDS_FILE}.")
    return label_of[wnid]

  if split == "train":
    matches = sorted(
      m.groups() for m in map(_TRAIN_IMAGE.fullmatch, tree.paths) if m
    )
    return [
      (f"train/{wnid}/images/{name}", label(wnid, name))
      for wnid, name in matches
    ]
  files = []
  annotations = tree.read(_VAL_ANNOTATIONS_FILE).decode("ascii")
  for line_number, line in enumerate(annotations.splitlines(), start=1):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) < 2:
      raise ValueError(
        f"{_VAL_ANNOTATIONS_FILE}:{line_number}: expected"
        f' "<file>\\t<wnid>\\t...", got {line!r}.'
      )
    where = f"{_VAL_ANNOTATIONS_FILE}:{line_number}"
    files.append((f"val/images/{fields[0]}", label(fields[1], where)))
  return files


def decode_jpeg(data: bytes, name: str) -> np.ndarray:
  """Decodes a JPEG to uint8 RGB [64, 64, 3] (grayscale is replicated).

  Raises:
    ImportError: Pillow is not installed.
    ValueError: the file is not a 64x64 image.
  """
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      "Preparing TinyImageNet decodes JPEGs with Pillow: pip install Pillow"
    ) from e
  try:
    with Image.open(io.BytesIO(data)) as image:
      pixels = np.asarray(image.convert("RGB"))
  except OSError as e:
    raise ValueError(f"{name} is not a readable image: {e}") from e
  if pixels.shape != IMAGE_SHAPE:
    raise ValueError(
      f"{name} is {pixels.shape[1]}x{pixels.shape[0]}, expected 64x64."
    )
  return pixels


class CureTinyImagenet(sources.OriginalFilesBuilder):
  """TinyImageNet: 100,000 train and 10,000 test 64x64 images, 200 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
    "1.0.0": "Raw uint8 RGB images decoded from the original JPEGs; labels"
    " index the sorted wnids; test = the labelled validation set.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Put {LOCAL_FILES_HELP} in manual_dir."
  REMOTE_FILES = REMOTE_FILES

  def _info(self) -> tfds.core.DatasetInfo:
    return sources.image_label_info(
      self,
      description=(
        "TinyImageNet: 200 ImageNet classes at 64x64, 500 training and 50"
        " validation images per class. The test split is the labelled"
        " validation set."
      ),
      image_shape=IMAGE_SHAPE,
      label=tfds.features.ClassLabel(num_classes=NUM_CLASSES),
      homepage="http://cs231n.stanford.edu/",
    )

  @classmethod
  def find_local_sources(
    cls, directory: epath.Path
  ) -> TinyImagenetSource | None:
    directory = epath.Path(directory)
    if (directory / ARCHIVE_NAME).is_file():
      return TinyImagenetSource(directory / ARCHIVE_NAME, is_archive=True)
    for folder in (directory / FOLDER_NAME, directory):
      if (
        (folder / _WNIDS_FILE).is_file()
        and (folder / "train").is_dir()
        and (folder / _VAL_ANNOTATIONS_FILE).is_file()
      ):
        return TinyImagenetSource(folder, is_archive=False)
    return None

  @classmethod
  def sources_from_download(
    cls, paths: Mapping[str, epath.Path]
  ) -> TinyImagenetSource:
    return TinyImagenetSource(paths["archive"], is_archive=True)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    source = self._sources(dl_manager)
    with open_tree(source) as tree:
      self.info.features["label"].names = read_class_ids(tree)
    return {
      split: self._generate_examples(source, split)
      for split in ("train", "test")
    }

  def _generate_examples(
    self, source: TinyImagenetSource, split: str
  ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
    with open_tree(source) as tree:
      files = list_split(tree, split, read_class_ids(tree))
      for index, (path, label) in enumerate(files):
        yield (
          index,
          {"image": decode_jpeg(tree.read(path), path), "label": label},
        )
