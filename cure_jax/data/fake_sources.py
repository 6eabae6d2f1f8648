"""Tiny datasets written in the ORIGINAL file formats, for tests.

Each writer fills a directory exactly as a user would after downloading the
real dataset (same file names, same formats, random contents) and returns
the splits that `cure_jax.data.load_split` must then produce, so that tests
of this package and of the training code can run on real code paths
without the real data.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile
from typing import Any

import numpy as np

from cure_jax.data import (
  cifar10_builder,
  loading,
  mnist_builder,
  tinyimagenet_builder,
)


def encode_idx(array: np.ndarray) -> bytes:
  """The uncompressed IDX bytes of a uint8 array (see `mnist_builder`)."""
  if array.dtype != np.uint8:
    raise TypeError(f"Only uint8 IDX files are written, got {array.dtype}.")
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(
    f">{array.ndim}I", *array.shape
  )
  return header + array.tobytes()


def _random_split(
  rng: np.random.Generator,
  num_examples: int,
  shape: tuple[int, ...],
  num_classes: int,
) -> loading.Split:
  """Random uint8 images (full range) and labels."""
  return loading.Split(
    rng.integers(0, 256, (num_examples, *shape), dtype=np.uint8),
    rng.integers(0, num_classes, num_examples).astype(np.int32),
  )


def write_fake_mnist(
  directory: os.PathLike[str] | str,
  *,
  num_train: int = 12,
  num_test: int = 5,
  seed: int = 0,
) -> dict[str, loading.Split]:
  """Writes the four gzipped MNIST IDX files with random contents; returns
  the expected 'train' and 'test' splits."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  splits = {
    "train": _random_split(rng, num_train, (28, 28, 1), 10),
    "test": _random_split(rng, num_test, (28, 28, 1), 10),
  }
  for split, data in splits.items():
    contents = {
      "images": encode_idx(data.images[..., 0]),
      "labels": encode_idx(data.labels.astype(np.uint8)),
    }
    for kind, raw in contents.items():
      name = mnist_builder.FILE_NAMES[f"{split}_{kind}"]
      with open(os.path.join(directory, name), "wb") as f:
        f.write(gzip.compress(raw))
  return splits


class _Python2Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Writes protocol-2 pickles as Python 2's cPickle did for CIFAR-10.

  Strings and bytes become (SHORT_)BINSTRING and NumPy's reconstruction
  function is named `numpy.core.multiarray._reconstruct`, as in the
  original batch files.
  """

  def save_bytes(self, obj: bytes) -> None:
    if len(obj) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
    self.memoize(obj)

  def save_str(self, obj: str) -> None:
    self.save_bytes(obj.encode("latin-1"))

  def save_global(self, obj: Any, name: str | None = None) -> None:
    if obj is np.zeros(0).__reduce__()[0]:
      self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
      self.memoize(obj)
    else:
      super().save_global(obj, name)

  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access
  dispatch[bytes] = save_bytes
  dispatch[str] = save_str


def python2_pickle(obj: Any) -> bytes:
  """Pickles `obj` as Python 2's cPickle would (protocol 2, byte strings)."""
  buffer = io.BytesIO()
  _Python2Pickler(buffer, protocol=2).dump(obj)
  return buffer.getvalue()


def write_fake_cifar10(
  directory: os.PathLike[str] | str,
  *,
  num_train: int = 10,
  num_test: int = 4,
  archive: bool = True,
  seed: int = 0,
) -> dict[str, loading.Split]:
  """Writes CIFAR-10's python version: the archive or the extracted folder.

  The train examples are spread over the five `data_batch_*` files in order.
  Returns the expected 'train' and 'test' splits.
  """
  rng = np.random.default_rng(seed)
  splits = {
    "train": _random_split(rng, num_train, (32, 32, 3), 10),
    "test": _random_split(rng, num_test, (32, 32, 3), 10),
  }
  files = {
    "batches.meta": python2_pickle(
      {
        "num_cases_per_batch": 10000,
        "label_names": list(cifar10_builder.CLASS_NAMES),
        "num_vis": 3072,
      }
    )
  }
  for split, names in cifar10_builder.SPLIT_BATCHES.items():
    parts = np.array_split(np.arange(splits[split].num_examples), len(names))
    for name, part in zip(names, parts):
      images = splits[split].images[part]
      files[name] = python2_pickle(
        {
          "batch_label": f"{name} of the fake CIFAR-10",
          # HWC -> one row of R, G, B planes per image.
          "data": images.transpose(0, 3, 1, 2).reshape(len(part), 3072),
          "labels": splits[split].labels[part].tolist(),
          "filenames": [f"fake_{i}.png" for i in part],
        }
      )
  _write_tree(
    directory,
    cifar10_builder.FOLDER_NAME,
    files,
    cifar10_builder.ARCHIVE_NAME if archive else None,
  )
  return splits


def _write_tree(
  directory: os.PathLike[str] | str,
  folder: str,
  files: dict[str, bytes],
  archive_name: str | None,
) -> None:
  """Writes files under `folder/` in a directory, or in a .tar.gz / .zip."""
  os.makedirs(directory, exist_ok=True)
  if archive_name is None:
    for name, data in files.items():
      path = os.path.join(directory, folder, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(data)
  elif archive_name.endswith(".zip"):
    with zipfile.ZipFile(os.path.join(directory, archive_name), "w") as zf:
      for name, data in files.items():
        zf.writestr(f"{folder}/{name}", data)
  else:
    with tarfile.open(os.path.join(directory, archive_name), "w:gz") as tf:
      for name, data in files.items():
        member = tarfile.TarInfo(f"{folder}/{name}")
        member.size = len(data)
        tf.addfile(member, io.BytesIO(data))


def _jpeg(pixels: np.ndarray) -> tuple[bytes, np.ndarray]:
  """JPEG-encodes an image; returns the bytes and their RGB decoding."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  buffer = io.BytesIO()
  Image.fromarray(pixels.squeeze()).save(buffer, format="JPEG", quality=90)
  data = buffer.getvalue()
  return data, tinyimagenet_builder.decode_jpeg(data, "fake")


def write_fake_tinyimagenet(
  directory: os.PathLike[str] | str,
  *,
  num_train_classes: int = 3,
  train_per_class: int = 2,
  num_test: int = 4,
  archive: bool = False,
  seed: int = 0,
) -> dict[str, loading.Split]:
  """Writes TinyImageNet's layout with random JPEGs: the folder or the zip.

  `wnids.txt` lists 200 made-up wnids in shuffled order; the train images
  cover the first `num_train_classes` of them (as listed), the first train
  image of each class is grayscale (as some real ones), and the validation
  images (the test split) have random classes. Needs Pillow. Returns the
  expected 'train' and 'test' splits, pixels as decoded from the JPEGs.
  """
  rng = np.random.default_rng(seed)
  wnids = [
    f"n{number:08d}"
    for number in rng.choice(
      10**8, tinyimagenet_builder.NUM_CLASSES, replace=False
    )
  ]
  label_of = {wnid: label for label, wnid in enumerate(sorted(wnids))}
  files = {"wnids.txt": ("\n".join(wnids) + "\n").encode()}
  expected = {"train": [], "test": []}
  for wnid in sorted(wnids[:num_train_classes]):  # Dataset order.
    for k in range(train_per_class):
      shape = (64, 64, 1) if k == 0 else (64, 64, 3)
      data, decoded = _jpeg(rng.integers(0, 256, shape, dtype=np.uint8))
      files[f"train/{wnid}/images/{wnid}_{k}.JPEG"] = data
      expected["train"].append((decoded, label_of[wnid]))
    files[f"train/{wnid}/{wnid}_boxes.txt"] = b""
  annotations = []
  for k in range(num_test):
    wnid = wnids[rng.integers(len(wnids))]
    data, decoded = _jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    files[f"val/images/val_{k}.JPEG"] = data
    annotations.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    expected["test"].append((decoded, label_of[wnid]))
  files["val/val_annotations.txt"] = "".join(annotations).encode()
  _write_tree(
    directory,
    tinyimagenet_builder.FOLDER_NAME,
    files,
    tinyimagenet_builder.ARCHIVE_NAME if archive else None,
  )
  return {
    split: loading.Split(
      np.stack([image for image, _ in pairs]),
      np.array([label for _, label in pairs], np.int32),
    )
    for split, pairs in expected.items()
  }
