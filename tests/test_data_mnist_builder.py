"""Tests for cure_jax.data.mnist_builder: IDX parsing and the tfds builder."""

import gzip
import os

import numpy as np
import pytest

from cure_jax import data
from cure_jax.data import fake_sources, mnist_builder


def test_decode_idx_exact_hand_made_file():
  # uint8, 3 dims of sizes 2, 1, 3, then values 1..6 in C order.
  raw = bytes(
    [0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]
  )
  np.testing.assert_array_equal(
    mnist_builder.decode_idx(raw), [[[1, 2, 3]], [[4, 5, 6]]]
  )
  # Big-endian int32 values are converted to native order.
  ints = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 1, 0, 255, 255, 255, 255])
  np.testing.assert_array_equal(mnist_builder.decode_idx(ints), [256, -1])


def test_encode_then_decode_idx_round_trips():
  array = np.random.default_rng(0).integers(0, 256, (5, 28, 28), np.uint8)
  np.testing.assert_array_equal(
    mnist_builder.decode_idx(fake_sources.encode_idx(array)), array
  )


@pytest.mark.parametrize(
  "raw, message",
  [
    (b"\x01\x00\x08\x01", "two zero bytes"),
    (b"\x00\x00\x07\x01", "unknown type code 0x07"),
    (bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2]), "should have 11 bytes, has 10"),
  ],
)
def test_decode_idx_rejects_malformed_files(raw, message):
  with pytest.raises(ValueError, match=message):
    mnist_builder.decode_idx(raw)


def test_read_split_names_the_inconsistent_file(tmp_path):
  fake_sources.write_fake_mnist(tmp_path, num_train=4, num_test=3)
  names = mnist_builder.FILE_NAMES
  with pytest.raises(ValueError, match="labels of shape .3,. for 4 images"):
    mnist_builder.read_split(
      tmp_path / names["train_images"], tmp_path / names["test_labels"]
    )
  (tmp_path / "bad.gz").write_bytes(b"not gzip")
  with pytest.raises(ValueError, match="Cannot read MNIST file .*bad.gz"):
    mnist_builder.read_split(
      tmp_path / "bad.gz", tmp_path / names["test_labels"]
    )


def test_offline_build_round_trips_exactly_in_file_order(tmp_path):
  expected = fake_sources.write_fake_mnist(
    tmp_path / "src", num_train=12, num_test=5, seed=1
  )
  for split in ("train", "test"):
    got = data.load_split(
      "mnist", split, data_dir=tmp_path / "src", tfds_data_dir=tmp_path / "tfds"
    )
    assert got.images.dtype == np.uint8 and got.labels.dtype == np.int32
    np.testing.assert_array_equal(got.images, expected[split].images)
    np.testing.assert_array_equal(got.labels, expected[split].labels)


def test_tfds_builder_is_a_standard_tfds_dataset(tmp_path):
  expected = fake_sources.write_fake_mnist(tmp_path / "src", num_train=6)
  data.prepare(
    "mnist", data_dir=tmp_path / "src", tfds_data_dir=tmp_path / "tfds"
  )
  # Readable by name with tfds's own API, as array_record, without TF.
  source = data.CureMnist(data_dir=tmp_path / "tfds").as_data_source("train")
  assert len(source) == 6
  np.testing.assert_array_equal(source[2]["image"], expected["train"].images[2])
  assert source[2]["label"] == expected["train"].labels[2]


@pytest.fixture(scope="module")
def real_mnist(tmp_path_factory):
  """The real MNIST, read from $CURE_MNIST_DIR (skips when it is unset)."""
  if not os.environ.get("CURE_MNIST_DIR"):
    pytest.skip(
      "Set CURE_MNIST_DIR to the directory of the 4 MNIST .gz files"
      " to test on the real MNIST."
    )
  tfds_dir = tmp_path_factory.mktemp("tfds")
  return {
    split: data.load_split("mnist", split, tfds_data_dir=tfds_dir)
    for split in ("train", "test")
  }


def test_real_mnist_sizes_labels_and_pixels(real_mnist):
  train, test = real_mnist["train"], real_mnist["test"]
  assert train.images.shape == (60_000, 28, 28, 1)
  assert test.images.shape == (10_000, 28, 28, 1)
  # The well-known first labels of each split, in file order.
  np.testing.assert_array_equal(
    train.labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
  )
  np.testing.assert_array_equal(
    test.labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
  )
  # Roughly balanced classes: 5421 (digit 5) to 6742 (digit 1) in train.
  train_counts = np.bincount(train.labels, minlength=10)
  test_counts = np.bincount(test.labels, minlength=10)
  assert train_counts.sum() == 60_000 and len(train_counts) == 10
  assert train_counts.min() == 5421 and train_counts.max() == 6742
  assert test_counts.min() == 892 and test_counts.max() == 1135
  assert train.images.min() == 0 and train.images.max() == 255


def test_real_mnist_matches_a_direct_parse(real_mnist):
  directory = os.environ["CURE_MNIST_DIR"]
  with gzip.open(os.path.join(directory, "t10k-images-idx3-ubyte.gz")) as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16)
  np.testing.assert_array_equal(real_mnist["test"].images.reshape(-1), raw)
