"""`python -m cure_jax.certify` on a checkpoint trained here on tiny data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# The shared helpers, and the autouse fixture that ignores the caller's
# data environment.
from test_train_loop import (  # pylint: disable=g-bad-import-order
  MNIST_CONFIG,
  NUM_TEST,
  REPO,
  tiny_config,
)

from cure_jax.certify import __main__ as certify_main
from cure_jax.certify import read_csv
from cure_jax.train import loop


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from cure_jax.data import fake_sources  # pylint: disable=g-import-not-at-top

  files = tmp_path_factory.mktemp("files")
  fake_sources.write_fake_mnist(files, num_train=48, num_test=NUM_TEST, seed=5)
  tfds = tmp_path_factory.mktemp("tfds")
  workdir = tmp_path_factory.mktemp("run")
  overrides = {
    "eval.certify_examples": 12,
    "eval.pgd_steps": 5,
    "eval.pgd_restarts": 1,
    "eval.alpha_steps": 3,
    "eval.final_examples": 4,
  }
  config = tiny_config(files, tfds, method="ibp", num_epochs=2, **overrides)
  loop.train_and_evaluate(config, str(workdir))
  return config, workdir, files, tfds, overrides


def test_writes_per_sample_csv_and_summary(trained):
  config, workdir, *_ = trained
  summary = certify_main.certify_checkpoint(config, str(workdir), log=None)
  on_disk = json.loads((workdir / "certify.json").read_text())
  assert on_disk["method"] == "ibp" and on_disk["dataset"] == "mnist"
  records = read_csv(str(workdir / "certify.csv"))
  assert len(records["label"]) == 12
  assert summary == on_disk
  for norm in ("linf", "l2", "l1"):
    certified = np.asarray(records[f"certified_{norm}"], bool)
    robust = np.asarray(records[f"pgd_{norm}"], bool)
    # A certified point is never broken by the attack.
    assert np.all(robust[certified])
  union = np.asarray(records["union_certified"], bool)
  each = np.all(
    [np.asarray(records[f"certified_{n}"], bool) for n in ("linf", "l2", "l1")],
    axis=0,
  )
  np.testing.assert_array_equal(union, each)


def test_command_line_prints_the_table(trained, tmp_path):
  config, workdir, files, tfds, overrides = trained
  del config
  args = [
    f"--config={MNIST_CONFIG}:cpu=True,method=ibp",
    f"--workdir={workdir}",
    "--output_name=cli",
    f"--config.dataset.data_dir={files}",
    f"--config.dataset.tfds_data_dir={tfds}",
    "--config.dataset.download=False",
    "--config.model.name=mlp",
  ]
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  result = subprocess.run(
    [sys.executable, "-m", "cure_jax.certify", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / "cli.csv").exists() and (workdir / "cli.json").exists()
  assert "union" in result.stdout.lower()
  missing = subprocess.run(
    [
      sys.executable,
      "-m",
      "cure_jax.certify",
      *args[:1],
      f"--workdir={tmp_path / 'nothing'}",
      *args[3:],
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert missing.returncode == 1
  assert "no checkpoint" in missing.stderr and "Traceback" not in missing.stderr
  assert not (tmp_path / "nothing").exists()  # nothing created
