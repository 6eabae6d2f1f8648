"""End-to-end tests of `train_and_evaluate` and the `cure_jax.main` job.

Runs a few steps on tiny MNIST files generated in the original IDX format
(and on real MNIST when $CURE_MNIST_DIR points at it): results and
checkpoints are written, an interrupted run resumes to exactly the
parameters of an uninterrupted one, overrides apply, and bad input — missing
data, unknown keys or methods, a corrupt checkpoint, a diverging loss — stops
with a message that says what to do, never losing a good checkpoint.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import cure_jax
from cure_jax import config_schema, data
from cure_jax import workdir as workdir_lib
from cure_jax.checkpoint import (
  Checkpointer,
  CheckpointRestoreError,
  checkpoint_dir,
  restore_for_eval,
)
from cure_jax.data import DataNotFoundError, fake_sources
from cure_jax.models import build_model
from cure_jax.train import checkpoint_timer, loop
from cure_jax.train.state import make_optimizer

REPO = pathlib.Path(__file__).resolve().parents[1]
# Read before `_no_data_env` clears it: .ci/run points it at real MNIST.
REAL_MNIST_DIR = os.environ.get("CURE_MNIST_DIR")
MNIST_CONFIG = str(REPO / "configs" / "mnist.py")
NUM_TRAIN, NUM_TEST, BATCH = 48, 20, 16  # 3 steps per epoch


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
  """Each test names its own data; the caller's environment is ignored."""
  for var in ("CURE_DATA_DIR", "CURE_MNIST_DIR", "TFDS_DATA_DIR"):
    monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def mnist_files(tmp_path_factory):
  directory = tmp_path_factory.mktemp("mnist_files")
  fake_sources.write_fake_mnist(
    directory, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=3
  )
  return directory


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def tiny_config(files, tfds, method="sabr", **overrides):
  """The MNIST CPU config of ``method``, shrunk to a few steps of an MLP."""
  config = config_schema.load_config(f"{MNIST_CONFIG}:cpu=True,method={method}")
  values = {
    "dataset.data_dir": str(files),
    "dataset.tfds_data_dir": str(tfds),
    "dataset.download": False,
    "model.name": "mlp",
    "batch_size": BATCH,
    "num_epochs": 3,
    "lr_milestones": (2,),
    "natural_epochs": 1,
    "eps_ramp_start": 1,
    "eps_ramp_end": 2,
    "pgd_steps": 2,
    "checkpoint_every_steps": 3,
    "log_every_steps": 1,
    "eval.batch_size": 8,
    "eval.final_methods": ("ibp",),
  }
  values.update(overrides)
  config.unlock()
  config_schema.apply_overrides(config, values)
  config.lock()
  return config


def restored_params(config, workdir):
  _, variables = restore_for_eval(config, str(workdir))
  return jax.device_get(variables)


def assert_trees_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_trains_evaluates_and_writes_results(
  mnist_files, tfds_dir, tmp_path, capsys, caplog, monkeypatch
):
  # A clock that moves a minute and a bit on every look: with
  # checkpoint_every_minutes=1 every logged step is due for a checkpoint.
  clock = iter(range(0, 10**6, 61))
  monkeypatch.setattr(checkpoint_timer, "_now", lambda: float(next(clock)))
  caplog.set_level("INFO", logger="absl")
  config = tiny_config(
    mnist_files, tfds_dir, checkpoint_every_minutes=1, keep_checkpoints=20
  )
  results = loop.train_and_evaluate(config, str(tmp_path))
  on_disk = json.loads((tmp_path / loop.RESULTS_FILE).read_text())
  assert on_disk == json.loads(json.dumps(results))
  assert results["test_examples"] == NUM_TEST
  assert results["steps"] == 9 and results["resumed_from_step"] == 0
  # Natural epoch, ε ramp, after the ramp: each phase's step is compiled
  # once, at its first step, and never again.
  assert results["train_phases_this_run"] == 3
  assert results["train_step_compilations_this_run"] == 3
  for key in (
    "clean_accuracy",
    "certified_accuracy_linf",
    "certified_accuracy_l2",
    "certified_accuracy_l1",
    "union_certified_accuracy",
  ):
    assert 0.0 <= results[key] <= 1.0
  # Certified never exceeds clean, the union never exceeds any norm.
  for norm in ("linf", "l2", "l1"):
    assert results[f"certified_accuracy_{norm}"] <= results["clean_accuracy"]
    assert (
      results["union_certified_accuracy"]
      <= results[f"certified_accuracy_{norm}"]
    )
  with Checkpointer(checkpoint_dir(str(tmp_path))) as ckpt:
    # Every step by time; by steps alone only 3, 6 and 9.
    assert ckpt.all_steps == tuple(range(1, 10))
  assert any((tmp_path / "tensorboard").iterdir())
  assert "sabr on mnist: 9 steps" in caplog.text
  assert "[step 9] " in caplog.text and "final evaluation" in caplog.text
  # The progress bar names each phase with its ETA.
  err = capsys.readouterr().err
  for phase in ("natural", "ramp", "robust"):
    assert f"{phase}, ETA " in err
  assert "final evaluation: 100%" in err
  # The run folder describes itself, and so does results.json.
  assert workdir_lib.read_config(str(tmp_path)).to_dict() == config.to_dict()
  run = workdir_lib.read_run_record(str(tmp_path))
  assert (
    run["seed"] == config.seed and run["versions"]["jax"] == jax.__version__
  )
  assert on_disk["config"] == json.loads(json.dumps(config.to_dict()))
  assert on_disk["provenance"]["backend"] == jax.default_backend()
  assert on_disk["provenance"]["devices"] == [str(d) for d in jax.devices()]
  # cure_jax.load: the model and variables back from the folder alone.
  model, variables, loaded = cure_jax.load(str(tmp_path))
  assert loaded.to_dict() == config.to_dict()
  assert_trees_equal(variables, restored_params(config, tmp_path))
  images = np.zeros((2, 28, 28, 1), np.float32)
  np.testing.assert_array_equal(
    model.apply(variables, images, train=False),
    build_model(config).apply(variables, images, train=False),
  )


@pytest.mark.parametrize("method", ["natural", "ibp", "cure_max", "patch_ibp"])
def test_each_objective_trains_with_finite_losses(
  mnist_files, tfds_dir, tmp_path, method
):
  config = tiny_config(
    mnist_files,
    tfds_dir,
    method=method,
    num_epochs=2,
    **{"eval.final_examples": 4},
  )
  results = loop.train_and_evaluate(config, str(tmp_path))
  assert results["method"] == method and results["steps"] == 6
  params = jax.tree.leaves(restored_params(config, tmp_path))
  assert all(np.all(np.isfinite(p)) for p in params)


def test_resume_after_interruption_reproduces_the_run_exactly(
  mnist_files, tfds_dir, tmp_path
):
  # cure_scratch: PGD random starts, Max, bound alignment and gradient
  # projection's natural branch and interval state all cross the restart.
  config = tiny_config(
    mnist_files,
    tfds_dir,
    method="cure_scratch",
    num_epochs=4,
    **{"cure.gp_interval_steps": 2, "eval.final_examples": 4},
  )
  straight = tmp_path / "straight"
  loop.train_and_evaluate(config, str(straight))
  interrupted = str(tmp_path / "interrupted")
  # Mid-epoch in the natural phase; then mid-interval of gradient projection
  # (the ramp ends at step 6).
  assert loop.train_and_evaluate(config, interrupted, stop_after_steps=2) == {
    "stopped_at_step": 2
  }
  assert loop.train_and_evaluate(config, interrupted, stop_after_steps=5) == {
    "stopped_at_step": 7
  }
  resumed = loop.train_and_evaluate(config, interrupted)
  assert resumed["resumed_from_step"] == 7
  assert_trees_equal(
    restored_params(config, straight), restored_params(config, interrupted)
  )


def test_real_mnist_if_available(tmp_path):
  mnist_dir = REAL_MNIST_DIR
  if not mnist_dir:
    pytest.skip(
      "real MNIST not available: set CURE_MNIST_DIR to the folder "
      "of the four original IDX .gz files (.ci/run does)"
    )
  config = tiny_config(
    mnist_dir,
    tmp_path / "tfds",
    method="ibp",
    num_epochs=2,
    batch_size=64,
    **{
      "dataset.train_examples": 640,
      "eval.final_examples": 200,
      "eval.batch_size": 100,
    },
  )
  results = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["test_examples"] == 200
  # 20 steps of an MLP on real digits learn far more than chance.
  assert results["clean_accuracy"] > 0.5


def test_missing_data_fails_fast_and_says_where_to_put_files(
  tfds_dir, tmp_path
):
  empty = tmp_path / "no_files_here"
  empty.mkdir()
  config = tiny_config(empty, tmp_path / "tfds")
  start = time.monotonic()
  with pytest.raises(DataNotFoundError) as error:
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert time.monotonic() - start < 30
  message = str(error.value)
  assert "train-images-idx3-ubyte.gz" in message
  assert "CURE_MNIST_DIR" in message
  # Nothing was written: no half-made workdir state to resume from.
  assert not (tmp_path / "run" / "checkpoints").exists() or not any(
    (tmp_path / "run" / "checkpoints").iterdir()
  )


def test_unknown_method_and_key_list_the_valid_ones():
  with pytest.raises(ValueError, match="valid methods are .*cure_max"):
    config_schema.load_config(f"{MNIST_CONFIG}:method=cure_maximum")
  with pytest.raises(ValueError, match="valid ones are .*setting"):
    config_schema.load_config(f"{MNIST_CONFIG}:settings=small")
  config = config_schema.load_config(f"{MNIST_CONFIG}:cpu=True")
  with pytest.raises(KeyError, match="Did you mean 'gp_beta'"):
    config_schema.apply_overrides(config, {"cure.gp_betta": 0.5})
  with pytest.raises(KeyError, match="valid keys at the top level"):
    config_schema.apply_overrides(config, {"learning_rat": 0.1})


def test_corrupt_checkpoint_stops_with_a_clear_error(
  mnist_files, tfds_dir, tmp_path
):
  config = tiny_config(mnist_files, tfds_dir, method="ibp")
  assert loop.train_and_evaluate(config, str(tmp_path), stop_after_steps=3) == {
    "stopped_at_step": 3
  }
  step_dir = pathlib.Path(checkpoint_dir(str(tmp_path))) / "3"
  data_files = [
    p
    for p in (step_dir / "state").rglob("*")
    if p.is_file() and p.parent.name == "d"
  ]
  assert data_files, f"no checkpoint data files under {step_dir}"
  for path in data_files:
    path.write_bytes(b"garbage" * 16)
  with pytest.raises(CheckpointRestoreError) as error:
    loop.train_and_evaluate(config, str(tmp_path))
  assert str(step_dir) in str(error.value)
  assert "point --workdir elsewhere" in str(error.value)
  assert step_dir.exists()  # never deleted, never overwritten


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
  mnist_files, tfds_dir, tmp_path
):
  # An infinite radius: the natural epoch (steps 1-3, checkpoint at 3) is
  # fine; once the ramp moves, IBP bounds are inf − inf = NaN.
  config = tiny_config(
    mnist_files, tfds_dir, method="ibp", eps_linf=float("inf")
  )
  with pytest.raises(
    loop.NonFiniteLossError,
    match=r"loss is nan at step \d+; the last good checkpoint \(step 3\)",
  ):
    loop.train_and_evaluate(config, str(tmp_path))
  with Checkpointer(checkpoint_dir(str(tmp_path))) as ckpt:
    assert ckpt.latest_step == 3
  params = jax.tree.leaves(restored_params(config, tmp_path))
  assert all(np.all(np.isfinite(p)) for p in params)


def _run_main(*args, env=None, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", "cure_jax.main", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
  )


def test_main_job_with_overrides_trains_and_writes_results(
  mnist_files, tfds_dir, tmp_path
):
  workdir = tmp_path / "run"
  result = _run_main(
    f"--config={MNIST_CONFIG}:cpu=True,method=ibp",
    f"--workdir={workdir}",
    f"--config.dataset.data_dir={mnist_files}",
    f"--config.dataset.tfds_data_dir={tfds_dir}",
    "--config.dataset.download=False",
    "--config.model.name=mlp",
    f"--config.batch_size={BATCH}",
    "--config.num_epochs=2",
    "--config.lr_milestones=(1,)",
    "--config.eps_ramp_end=2",
    "--config.eval.final_methods=('ibp',)",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((workdir / loop.RESULTS_FILE).read_text())
  assert results["method"] == "ibp" and results["steps"] == 6
  assert results["certification_methods"] == ["ibp"]


def test_main_rejects_an_unknown_override_key(tmp_path):
  result = _run_main(
    f"--config={MNIST_CONFIG}:cpu=True",
    f"--workdir={tmp_path}",
    "--config.cure.gp_betta=0.5",
  )
  assert result.returncode != 0
  assert "unknown config key 'cure.gp_betta'" in result.stderr
  assert "Did you mean 'gp_beta'" in result.stderr
  assert "Traceback" not in result.stderr


def test_main_reports_missing_data_without_a_traceback(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  result = _run_main(
    f"--config={MNIST_CONFIG}:cpu=True",
    f"--workdir={tmp_path / 'run'}",
    f"--config.dataset.data_dir={empty}",
    f"--config.dataset.tfds_data_dir={tmp_path / 'tfds'}",
    "--config.dataset.download=False",
    timeout=120,
  )
  assert result.returncode == 1
  assert "DataNotFoundError" in result.stderr
  assert "Traceback" not in result.stderr


def test_finetune_from_a_missing_run_says_to_train_it_first(
  mnist_files, tfds_dir, tmp_path
):
  source = tmp_path / "no_such_run"
  config = tiny_config(
    mnist_files, tfds_dir, method="cure_finetune", finetune_from=str(source)
  )
  with pytest.raises(FileNotFoundError, match="train the l∞ model there"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not source.exists()  # nothing created where the source should be


def test_finetune_starts_from_the_source_runs_variables(
  mnist_files, tfds_dir, tmp_path
):
  source = tiny_config(mnist_files, tfds_dir, method="ibp")
  loop.train_and_evaluate(source, str(tmp_path / "linf"), stop_after_steps=3)
  config = tiny_config(
    mnist_files,
    tfds_dir,
    method="cure_finetune",
    finetune_from=str(tmp_path / "linf"),
    **{"cure.gp_beta": 0.5},
  )
  info, model = data.dataset_info("mnist"), build_model(config)
  optimizer = make_optimizer(config, steps_per_epoch=3)
  state = loop._pretrained(config, model, optimizer, info)  # pylint: disable=protected-access
  assert int(state.step) == 0 and state.gp != ()  # its own optimizer and GP
  assert_trees_equal(
    {"params": state.params, "batch_stats": state.batch_stats},
    restored_params(source, tmp_path / "linf"),
  )


def _with_batch_norm(config):
  """``config`` with BatchNorm after each of its MLP's hidden layers."""
  config.unlock()
  config.model.batch_norm = True
  config.lock()
  return config


def test_midpoint_moments_train_a_batchnorm_model_end_to_end(
  mnist_files, tfds_dir, tmp_path
):
  """No clean pass after the natural epoch: the running statistics still move
  (the bounded passes record their midpoints' moments), and stay finite.
  CURE-Max runs SABR's l∞ and the l2 term's bounded passes; IBP's are the
  midpoint run of the parallel training test (on the small CNN; here the
  MLP with BatchNorm, a smaller program to compile)."""
  config = _with_batch_norm(
    tiny_config(
      mnist_files,
      tfds_dir,
      method="cure_max",
      bn_moments="midpoint",
      **{"eval.final_examples": 4},
    )
  )
  results = loop.train_and_evaluate(config, str(tmp_path / "midpoint"))
  assert results["steps"] == 9
  natural_only = _with_batch_norm(
    tiny_config(
      mnist_files,
      tfds_dir,
      method="natural",
      num_epochs=1,
      **{"eval.final_examples": 4},
    )
  )
  loop.train_and_evaluate(natural_only, str(tmp_path / "natural"))
  after = restored_params(config, tmp_path / "midpoint")
  before = restored_params(natural_only, tmp_path / "natural")
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(after))
  # The same first epoch (same seed), then 6 midpoint steps moved the stats.
  moved = jax.tree.map(
    lambda a, b: float(np.max(np.abs(a - b))),
    after["batch_stats"],
    before["batch_stats"],
  )
  assert min(jax.tree.leaves(moved)) > 0
