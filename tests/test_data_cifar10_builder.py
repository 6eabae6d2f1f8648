"""Tests for cure_jax.data.cifar10_builder: python batches and the builder."""

import os
import pickle

import numpy as np
import pytest

from cure_jax import data
from cure_jax.data import cifar10_builder, fake_sources


def test_decode_batch_maps_rgb_planes_to_hwc_exactly():
  # One image whose row is R plane, G plane, B plane, each row-major 32x32.
  row = np.arange(3072) % 251
  batch = fake_sources.python2_pickle(
    {"data": row.astype(np.uint8)[None], "labels": [7]}
  )
  images, labels = cifar10_builder.decode_batch(batch)
  assert images.shape == (1, 32, 32, 3) and labels.tolist() == [7]
  for i, j, c in [(0, 0, 0), (0, 1, 0), (1, 0, 1), (31, 31, 2), (5, 17, 1)]:
    assert images[0, i, j, c] == row[1024 * c + 32 * i + j]


def test_decode_batch_reads_python3_pickles_too():
  rows = np.random.default_rng(0).integers(0, 256, (2, 3072), np.uint8)
  batch = pickle.dumps({b"data": rows, b"labels": [1, 2]}, protocol=2)
  images, labels = cifar10_builder.decode_batch(batch)
  np.testing.assert_array_equal(images[1, 0, 0], rows[1, [0, 1024, 2048]])
  np.testing.assert_array_equal(labels, [1, 2])


class _Exploit:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def test_decode_batch_refuses_code_in_pickles(tmp_path):
  marker = tmp_path / "pwned"
  malicious = pickle.dumps({b"data": _Exploit(f"touch {marker}")})
  with pytest.raises(ValueError, match=r"may not refer to posix\.system"):
    cifar10_builder.decode_batch(malicious)
  assert not marker.exists()


@pytest.mark.parametrize(
  "batch, message",
  [
    ({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, "3072"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "one label"),
    ({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}, r"\[0, 10\)"),
    ({"labels": [0]}, "Not a CIFAR-10 python batch"),
  ],
)
def test_decode_batch_rejects_malformed_batches(batch, message):
  with pytest.raises(ValueError, match=message):
    cifar10_builder.decode_batch(fake_sources.python2_pickle(batch))


@pytest.mark.parametrize("archive", [True, False])
def test_offline_build_from_archive_or_folder_is_exact(tmp_path, archive):
  expected = fake_sources.write_fake_cifar10(
    tmp_path / "src", num_train=11, num_test=3, archive=archive, seed=2
  )
  for split in ("train", "test"):
    got = data.load_split(
      "cifar10",
      split,
      data_dir=tmp_path / "src",
      tfds_data_dir=tmp_path / "tfds",
    )
    assert got.images.shape[1:] == (32, 32, 3)
    np.testing.assert_array_equal(got.images, expected[split].images)
    np.testing.assert_array_equal(got.labels, expected[split].labels)


def test_folder_given_directly_is_accepted(tmp_path):
  expected = fake_sources.write_fake_cifar10(tmp_path, archive=False)
  folder = tmp_path / cifar10_builder.FOLDER_NAME
  got = data.load_split(
    "cifar10", "test", data_dir=folder, tfds_data_dir=tmp_path / "tfds"
  )
  np.testing.assert_array_equal(got.labels, expected["test"].labels)


def test_incomplete_folder_is_not_a_source(tmp_path):
  fake_sources.write_fake_cifar10(tmp_path, archive=False)
  os.remove(tmp_path / cifar10_builder.FOLDER_NAME / "data_batch_3")
  assert cifar10_builder.CureCifar10.find_local_sources(tmp_path) is None
  with pytest.raises(
    data.DataNotFoundError, match="data_batch_1 ... data_batch_5"
  ):
    data.load_split(
      "cifar10", "train", data_dir=tmp_path, tfds_data_dir=tmp_path / "tfds"
    )
