"""`cure_jax.export` from a run's directory: checkpoint and test split in,
VNN-COMP folder out."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from cure_jax import export as export_module
from cure_jax import workdir as workdir_lib
from cure_jax.data import fake_sources
from cure_jax.interchange import read_instances, read_vnnlib
from cure_jax.models import get_model
from cure_jax.train.state import create_train_state, make_optimizer

try:  # the config schema and checkpoints at the package's top level
  from cure_jax import config_schema as config_loading
  from cure_jax.checkpoint import Checkpointer, checkpoint_dir
except ImportError:  # ... or as settings and inside cure_jax.train
  from cure_jax import settings as config_loading
  from cure_jax.train.checkpoint import Checkpointer
  from cure_jax.train.loop import checkpoint_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_CONFIG = str(REPO / "configs" / "mnist.py")


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
  for var in ("CURE_DATA_DIR", "CURE_MNIST_DIR", "TFDS_DATA_DIR"):
    monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A workdir holding a step-0 checkpoint of a small CNN with BatchNorm
  statistics away from (0, 1), and fake MNIST files."""
  files = tmp_path_factory.mktemp("mnist")
  test = fake_sources.write_fake_mnist(files, num_train=8, num_test=6, seed=1)[
    "test"
  ]
  config = config_loading.load_config(f"{MNIST_CONFIG}:cpu=True,method=ibp")
  config.unlock()
  config_loading.apply_overrides(
    config,
    {
      "dataset.data_dir": str(files),
      "dataset.tfds_data_dir": str(tmp_path_factory.mktemp("tfds")),
      "dataset.download": False,
      "model.name": "small_cnn",
    },
  )
  config.lock()
  workdir = tmp_path_factory.mktemp("run")
  model = get_model(
    config.model.name, **{k: v for k, v in config.model.items() if k != "name"}
  )
  state = create_train_state(
    config, model, make_optimizer(config, 1), (28, 28, 1)
  )
  rng = np.random.default_rng(0)
  stats = jax.tree.map(
    lambda s: np.float32(rng.uniform(0.5, 1.5, s.shape)), state.batch_stats
  )
  with Checkpointer(checkpoint_dir(str(workdir)), async_save=False) as ckpt:
    ckpt.save(0, state._replace(batch_stats=stats), force=True)
  workdir_lib.write_run_record(str(workdir), config)  # as training does
  return config, workdir, test


def test_exports_the_checkpoint_and_first_test_points(run):
  config, workdir, test = run
  report = export_module.export_checkpoint(
    config, str(workdir), examples=4, eps=0.02, timeout=9, log=None
  )
  assert report["instances"] == 4 and report["eps_linf"] == 0.02
  on_disk = json.loads((workdir / "vnncomp" / "export.json").read_text())
  assert on_disk == report
  assert on_disk["config"] == json.loads(json.dumps(config.to_dict()))
  assert on_disk["provenance"]["versions"]["jax"] == jax.__version__
  assert max(report["max_abs_logit_difference"].values()) <= 1e-5
  out_dir = workdir / "vnncomp"
  instances = read_instances(str(out_dir / "instances.csv"))
  assert len(instances) == 4
  assert instances[0].onnx_path == str(out_dir / "onnx" / "model.onnx")
  assert instances[2].vnnlib_path == str(
    out_dir / "specs" / "prop_2_linf_0.02.vnnlib"
  )
  for i, instance in enumerate(instances):
    (region,) = read_vnnlib(instance.vnnlib_path).regions
    pixels = test.images[i].reshape(-1) / 255.0  # one channel: NCHW = NHWC
    np.testing.assert_allclose(
      region.lower, np.clip(pixels - 0.02, 0, 1), atol=1e-7
    )
    label = int(test.labels[i])
    assert all(d.coeffs[0][label] == -1 for d in region.disjuncts)


def test_radius_defaults_to_the_config_and_l2_is_refused(run, tmp_path):
  config, workdir, _ = run
  report = export_module.export_checkpoint(
    config, str(workdir), str(tmp_path), examples=1, log=None
  )
  assert report["eps_linf"] == config.eval.eps_linf
  with pytest.raises(ValueError, match="VNNLIB bounds inputs by boxes only"):
    export_module.export_checkpoint(
      config, str(workdir), str(tmp_path), norms=["l2"], log=None
    )


def test_missing_checkpoint_is_an_error(run, tmp_path):
  config, _, _ = run
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    export_module.export_checkpoint(config, str(tmp_path / "none"), log=None)


def test_command_line_needs_only_the_workdir(run, tmp_path):
  _, workdir, _ = run
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "cure_jax.export",
      f"--workdir={workdir}",
      f"--out_dir={tmp_path}",
      "--examples=2",
      "--config.eval.eps_linf=0.03",  # overrides the recorded config
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "export.json").read_text())
  assert report["instances"] == 2 and report["eps_linf"] == 0.03
  assert report["config"]["model"]["name"] == "small_cnn"
