"""Tests for `python -m cure_jax.data`, the preparation command."""

import os
import subprocess
import sys

from cure_jax.data import fake_sources


def test_prepares_and_reports_each_split(tmp_path):
  fake_sources.write_fake_mnist(tmp_path / "src", num_train=9, num_test=4)
  env = {k: v for k, v in os.environ.items() if not k.startswith("CURE_")}
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "cure_jax.data",
      "mnist",
      "--data_dir",
      str(tmp_path / "src"),
      "--tfds_data_dir",
      str(tmp_path / "tfds"),
      "--no_download",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  assert "mnist train: 9 examples, images (28, 28, 1)" in result.stdout
  assert "mnist test: 4 examples" in result.stdout
  assert (tmp_path / "tfds" / "cure_mnist" / "1.0.0").is_dir()


def test_missing_files_exit_with_the_instructions(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith("CURE_")}
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "cure_jax.data",
      "cifar10",
      "--data_dir",
      str(tmp_path),
      "--tfds_data_dir",
      str(tmp_path / "tfds"),
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
    check=False,
  )
  assert result.returncode == 1
  assert result.stderr.startswith("error: Dataset 'cifar10' is not prepared")
  assert "cifar-10-python.tar.gz" in result.stderr
