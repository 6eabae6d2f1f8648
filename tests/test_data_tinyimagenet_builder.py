"""Tests for cure_jax.data.tinyimagenet_builder: folder, zip and labels."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from cure_jax import data
from cure_jax.data import fake_sources
from cure_jax.data import tinyimagenet_builder as tin


@pytest.mark.parametrize("archive", [True, False])
def test_offline_build_from_zip_or_folder_is_exact(tmp_path, archive):
  expected = fake_sources.write_fake_tinyimagenet(
    tmp_path / "src",
    num_train_classes=3,
    train_per_class=2,
    num_test=5,
    archive=archive,
    seed=3,
  )
  for split in ("train", "test"):
    got = data.load_split(
      "tinyimagenet",
      split,
      data_dir=tmp_path / "src",
      tfds_data_dir=tmp_path / "tfds",
    )
    assert got.images.shape[1:] == (64, 64, 3)
    np.testing.assert_array_equal(got.images, expected[split].images)
    np.testing.assert_array_equal(got.labels, expected[split].labels)


def test_labels_index_the_sorted_wnids(tmp_path):
  fake_sources.write_fake_tinyimagenet(
    tmp_path, num_train_classes=2, train_per_class=1, num_test=3
  )
  root = tmp_path / tin.FOLDER_NAME
  wnids = (root / "wnids.txt").read_text().split()
  assert wnids != sorted(wnids)  # The file's order is not the label order.
  train = data.load_split(
    "tinyimagenet", "train", data_dir=tmp_path, tfds_data_dir=tmp_path / "tfds"
  )
  expected = sorted(sorted(wnids).index(w) for w in wnids[:2])
  np.testing.assert_array_equal(train.labels, expected)
  test = data.load_split(
    "tinyimagenet", "test", data_dir=tmp_path, tfds_data_dir=tmp_path / "tfds"
  )
  annotated = [
    line.split("\t")[1]
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines()
  ]
  np.testing.assert_array_equal(
    test.labels, [sorted(wnids).index(w) for w in annotated]
  )
  # The class names are stored with the tfds dataset.
  builder = data.prepare("tinyimagenet", tfds_data_dir=tmp_path / "tfds")
  assert builder.info.features["label"].names == sorted(wnids)


def test_grayscale_jpegs_become_rgb(tmp_path):
  expected = fake_sources.write_fake_tinyimagenet(tmp_path, train_per_class=2)
  train = data.load_split(
    "tinyimagenet", "train", data_dir=tmp_path, tfds_data_dir=tmp_path / "tfds"
  )
  gray = train.images[0]  # The fake's first image of a class is grayscale.
  assert np.array_equal(gray[..., 0], gray[..., 1])
  assert np.array_equal(gray[..., 0], gray[..., 2])
  assert not np.array_equal(train.images[1][..., 0], train.images[1][..., 1])
  np.testing.assert_array_equal(train.images, expected["train"].images)


def _tree(files):
  return tin.FileTree(lambda path: files[path], list(files))


def test_wnids_file_must_list_200_distinct_ids():
  with pytest.raises(ValueError, match="200 distinct class ids, lists 2"):
    tin.read_class_ids(_tree({"wnids.txt": b"n01\nn02\n"}))
  with pytest.raises(ValueError, match=r"lists 200 \(199 distinct\)"):
    tin.read_class_ids(
      _tree(
        {"wnids.txt": b"n0 " * 2 + b" ".join(b"n%d" % i for i in range(1, 199))}
      )
    )


def test_unknown_classes_and_malformed_annotations_are_reported():
  wnids = [f"n{i:03d}" for i in range(200)]
  stray = _tree({"train/n999/images/n999_0.JPEG": b""})
  with pytest.raises(ValueError, match="class 'n999' is not in wnids.txt"):
    tin.list_split(stray, "train", wnids)
  bad_line = _tree({"val/val_annotations.txt": b"val_0.JPEG\tn001\nval_1\n"})
  with pytest.raises(ValueError, match="val_annotations.txt:2: expected"):
    tin.list_split(bad_line, "test", wnids)


def test_decode_jpeg_rejects_other_sizes_and_non_images():
  buffer = io.BytesIO()
  Image.new("RGB", (32, 64)).save(buffer, format="JPEG")
  with pytest.raises(ValueError, match="x.JPEG is 32x64, expected 64x64"):
    tin.decode_jpeg(buffer.getvalue(), "x.JPEG")
  with pytest.raises(ValueError, match="y.JPEG is not a readable image"):
    tin.decode_jpeg(b"not a jpeg", "y.JPEG")


def test_incomplete_folder_is_not_a_source(tmp_path):
  fake_sources.write_fake_tinyimagenet(tmp_path)
  os.remove(tmp_path / tin.FOLDER_NAME / "val" / "val_annotations.txt")
  assert tin.CureTinyImagenet.find_local_sources(tmp_path) is None
