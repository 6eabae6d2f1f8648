"""Tests for cure_jax.data.loading: sources, fast failures, downloads, cache."""

import functools
import http.server
import os
import socket
import threading
import time

import numpy as np
import pytest

from cure_jax import data
from cure_jax.data import fake_sources, loading, mnist_builder, sources

_MNIST_FILES = (
  "train-images-idx3-ubyte.gz",
  "train-labels-idx1-ubyte.gz",
  "t10k-images-idx3-ubyte.gz",
  "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
  """Tests choose their own sources: ignore the caller's environment."""
  for var in (
    "CURE_DATA_DIR",
    "CURE_MNIST_DIR",
    "CURE_CIFAR10_DIR",
    "CURE_TINYIMAGENET_DIR",
  ):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("NO_PROXY", "127.0.0.1")


def _closed_port():
  """A loopback port nothing listens on (connections are refused)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize(
  "name, env_var, files",
  [
    ("mnist", "CURE_MNIST_DIR", _MNIST_FILES),
    (
      "cifar10",
      "CURE_CIFAR10_DIR",
      ("cifar-10-python.tar.gz", "cifar-10-batches-py/"),
    ),
    (
      "tinyimagenet",
      "CURE_TINYIMAGENET_DIR",
      ("tiny-imagenet-200.zip", "tiny-imagenet-200/", "val_annotations.txt"),
    ),
  ],
)
def test_missing_directory_fails_fast_naming_files_and_settings(
  tmp_path, name, env_var, files
):
  start = time.monotonic()
  with pytest.raises(data.DataNotFoundError) as error:
    data.load_split(
      name,
      "train",
      data_dir=tmp_path / "absent",
      tfds_data_dir=tmp_path / "tfds",
    )
  assert time.monotonic() - start < 5
  message = str(error.value)
  for needed in (
    *files,
    str(tmp_path / "absent"),
    "data_dir",
    env_var,
    "CURE_DATA_DIR",
  ):
    assert needed in message


def test_environment_directories_in_order_of_precedence(tmp_path, monkeypatch):
  own = fake_sources.write_fake_mnist(tmp_path / "own", seed=1)
  fake_sources.write_fake_mnist(tmp_path / "shared", seed=2)
  monkeypatch.setenv("CURE_DATA_DIR", str(tmp_path / "shared"))
  monkeypatch.setenv("CURE_MNIST_DIR", str(tmp_path / "own"))
  got = data.load_split("mnist", "test", tfds_data_dir=tmp_path / "tfds")
  np.testing.assert_array_equal(got.images, own["test"].images)
  monkeypatch.setenv("CURE_MNIST_DIR", str(tmp_path / "absent"))
  with pytest.raises(data.DataNotFoundError, match=r"from \$CURE_MNIST_DIR"):
    data.load_split("mnist", "test", tfds_data_dir=tmp_path / "other")


def test_shared_directory_serves_every_dataset(tmp_path, monkeypatch):
  mnist = fake_sources.write_fake_mnist(tmp_path / "all")
  cifar = fake_sources.write_fake_cifar10(tmp_path / "all")
  monkeypatch.setenv("CURE_DATA_DIR", str(tmp_path / "all"))
  for name, expected in (("mnist", mnist), ("cifar10", cifar)):
    got = data.load_split(name, "test", tfds_data_dir=tmp_path / "tfds")
    np.testing.assert_array_equal(got.labels, expected["test"].labels)


def test_tfds_manual_directory_is_used(tmp_path):
  manual = tmp_path / "tfds" / "downloads" / "manual"
  expected = fake_sources.write_fake_cifar10(manual)
  got = data.load_split(
    "cifar10", "train", tfds_data_dir=tmp_path / "tfds", download=False
  )
  np.testing.assert_array_equal(got.images, expected["train"].images)


def test_no_source_without_download_fails_fast(tmp_path):
  start = time.monotonic()
  with pytest.raises(data.DataNotFoundError, match="download=False") as error:
    data.load_split("mnist", "train", tfds_data_dir=tmp_path, download=False)
  assert time.monotonic() - start < 5
  assert all(name in str(error.value) for name in _MNIST_FILES)


def test_unreachable_server_fails_fast(tmp_path, monkeypatch):
  url = f"http://127.0.0.1:{_closed_port()}/cifar-10-python.tar.gz"
  monkeypatch.setattr(
    data.CureCifar10,
    "REMOTE_FILES",
    {"archive": sources.RemoteFile(url, "0" * 32)},
  )
  start = time.monotonic()
  with pytest.raises(data.DataNotFoundError) as error:
    data.load_split("cifar10", "train", tfds_data_dir=tmp_path)
  assert time.monotonic() - start < 5
  message = str(error.value)
  assert "no answer from 127.0.0.1" in message and url in message
  assert "cifar-10-python.tar.gz" in message and "CURE_DATA_DIR" in message


@pytest.fixture
def mnist_server(tmp_path):
  """Serves fake MNIST files over loopback HTTP; yields (base URL, splits)."""
  expected = fake_sources.write_fake_mnist(tmp_path / "www", seed=4)
  handler = functools.partial(
    http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www")
  )
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}/", expected
  server.shutdown()
  server.server_close()


def _served_remote_files(base_url, directory, md5=None):
  return {
    key: sources.RemoteFile(
      base_url + name, md5 or sources.file_md5(os.path.join(directory, name))
    )
    for key, name in mnist_builder.FILE_NAMES.items()
  }


def test_online_download_prepares_the_same_dataset(
  tmp_path, monkeypatch, mnist_server
):
  base_url, expected = mnist_server
  monkeypatch.setattr(
    data.CureMnist,
    "REMOTE_FILES",
    _served_remote_files(base_url, tmp_path / "www"),
  )
  for split in ("train", "test"):
    got = data.load_split("mnist", split, tfds_data_dir=tmp_path / "tfds")
    np.testing.assert_array_equal(got.images, expected[split].images)
    np.testing.assert_array_equal(got.labels, expected[split].labels)


def test_download_with_wrong_md5_is_rejected(
  tmp_path, monkeypatch, mnist_server
):
  base_url, _ = mnist_server
  monkeypatch.setattr(
    data.CureMnist,
    "REMOTE_FILES",
    _served_remote_files(base_url, tmp_path / "www", md5="0" * 32),
  )
  with pytest.raises(OSError, match="the published file has MD5 0{32}"):
    data.load_split("mnist", "train", tfds_data_dir=tmp_path / "tfds")


def test_cache_is_written_reused_and_validated(tmp_path):
  expected = fake_sources.write_fake_mnist(tmp_path / "src", num_train=7)
  builder = data.prepare(
    "mnist", data_dir=tmp_path / "src", tfds_data_dir=tmp_path / "tfds"
  )
  cache = os.path.join(builder.data_path, "train.arrays.npz")
  data.load_split(
    "mnist", "train", tfds_data_dir=tmp_path / "tfds", cache=False
  )
  assert not os.path.exists(cache)
  data.load_split("mnist", "train", tfds_data_dir=tmp_path / "tfds")
  assert os.path.exists(cache)
  # The cache is what is read: a consistent edit shows through...
  edited = expected["train"].images.copy()
  edited[0, 0, 0, 0] ^= 1
  np.savez(cache, images=edited, labels=expected["train"].labels)
  got = data.load_split("mnist", "train", tfds_data_dir=tmp_path / "tfds")
  np.testing.assert_array_equal(got.images, edited)
  # ...and a cache that does not match the dataset is ignored and rewritten.
  np.savez(cache, images=edited[:3], labels=expected["train"].labels[:3])
  got = data.load_split("mnist", "train", tfds_data_dir=tmp_path / "tfds")
  np.testing.assert_array_equal(got.images, expected["train"].images)
  with np.load(cache) as rewritten:
    assert len(rewritten["labels"]) == 7


def test_unknown_names_and_splits_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="choose one of mnist, cifar10"):
    data.load_split("svhn", "train", tfds_data_dir=tmp_path)
  with pytest.raises(ValueError, match="Unknown split 'validation'"):
    data.load_split("mnist", "validation", tfds_data_dir=tmp_path)


def test_split_take_and_num_examples():
  split = loading.Split(
    np.zeros((5, 2, 2, 1), np.uint8), np.arange(5, dtype=np.int32)
  )
  assert split.num_examples == 5
  np.testing.assert_array_equal(split.take(3).labels, [0, 1, 2])
  with pytest.raises(ValueError, match="Cannot take 6 of 5"):
    split.take(6)


def test_a_dataset_prepared_meanwhile_by_another_process_is_used(
  tmp_path, monkeypatch
):
  expected = fake_sources.write_fake_mnist(tmp_path / "src", num_train=5)
  real_prepare = mnist_builder.CureMnist.download_and_prepare

  def lose_the_race(self, **kwargs):
    # Another process finishes first: tfds's final rename then fails.
    winner = mnist_builder.CureMnist(
      data_dir=self.data_dir_root, file_format="array_record"
    )
    real_prepare(winner, **kwargs)
    raise FileExistsError(f"Cannot rename: {self.data_path} already exists.")

  monkeypatch.setattr(
    mnist_builder.CureMnist, "download_and_prepare", lose_the_race
  )
  got = data.load_split(
    "mnist", "train", data_dir=tmp_path / "src", tfds_data_dir=tmp_path / "tfds"
  )
  np.testing.assert_array_equal(got.images, expected["train"].images)


def test_a_failed_rename_without_a_prepared_dataset_is_raised(
  tmp_path, monkeypatch
):
  fake_sources.write_fake_mnist(tmp_path / "src", num_train=5)

  def fail(self, **kwargs):
    del kwargs
    raise FileExistsError("Cannot rename: something else is in the way.")

  monkeypatch.setattr(mnist_builder.CureMnist, "download_and_prepare", fail)
  with pytest.raises(FileExistsError, match="something else"):
    data.prepare(
      "mnist", data_dir=tmp_path / "src", tfds_data_dir=tmp_path / "tfds"
    )
