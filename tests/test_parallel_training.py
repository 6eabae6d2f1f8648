"""The real training loop on 1 and 8 (simulated) devices, and after SIGKILL.

Run as a script, this file is a worker: it trains the CURE-Max objective of
an MLP (its clean, SABR and l2 terms) and IBP with midpoint BatchNorm
moments of the small CNN, for a few steps on generated MNIST files with whatever
devices it sees, and writes the final parameters to an .npz file. The tests
start it in subprocesses, since the number of CPU devices must be fixed
before JAX initializes. A second test kills `python -m cure_jax.main` with
SIGKILL in the middle of an epoch, restarts it, and checks that the result
is bitwise the parameters of an uninterrupted run.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_CONFIG = str(REPO / "configs" / "mnist.py")
# Run name -> (method, overrides). The BatchNorm CNN with midpoint moments
# checks that moments reduced over a sharded bounded batch match one device's
# (with IBP: SABR's PGD sign steps turn summation-order differences into
# ~1e-4 differences after a few steps, with clean moments too).
RUNS = {
  "cure_max": ("cure_max", {}),
  "ibp_midpoint": (
    "ibp",
    {"model.name": "small_cnn", "bn_moments": "midpoint"},
  ),
}
GLOBAL_BATCH = 16


def _config(method, files, tfds, **overrides):
  from cure_jax import config_schema  # pylint: disable=g-import-not-at-top

  config = config_schema.load_config(f"{MNIST_CONFIG}:cpu=True,method={method}")
  values = {
    "dataset.data_dir": str(files),
    "dataset.tfds_data_dir": str(tfds),
    "dataset.download": False,
    "model.name": "mlp",
    "batch_size": GLOBAL_BATCH,
    "num_epochs": 2,
    "lr_milestones": (1,),
    "natural_epochs": 0,
    "eps_ramp_start": 0,
    "eps_ramp_end": 1,
    "pgd_steps": 2,
    "checkpoint_every_steps": 100,
    "log_every_steps": 1,
    "eval.final_examples": 4,
    "eval.final_methods": ("ibp",),
    "eval.batch_size": 4,
  }
  values.update(overrides)
  config.unlock()
  config_schema.apply_overrides(config, values)
  config.lock()
  return config


def _worker(files, tfds, workdir, out_path):
  import jax  # pylint: disable=g-import-not-at-top

  from cure_jax.checkpoint import restore_for_eval  # pylint: disable=g-import-not-at-top
  from cure_jax.train import loop  # pylint: disable=g-import-not-at-top

  arrays = {"devices": np.asarray(jax.device_count())}
  for name, (method, overrides) in RUNS.items():
    config = _config(method, files, tfds, **overrides)
    results = loop.train_and_evaluate(config, os.path.join(workdir, name))
    _, variables = restore_for_eval(config, os.path.join(workdir, name))
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(variables))
    for path, leaf in leaves:
      arrays[f"{name}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    arrays[f"{name}/clean_accuracy"] = np.asarray(results["clean_accuracy"])
  np.savez(out_path, **arrays)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
  from cure_jax.data import fake_sources  # pylint: disable=g-import-not-at-top

  files = tmp_path_factory.mktemp("files")
  fake_sources.write_fake_mnist(files, num_train=48, num_test=8, seed=7)
  return files


def _env(devices):
  from launch import local  # pylint: disable=g-import-not-at-top

  env = {
    k: v for k, v in os.environ.items() if not k.startswith(("CURE_", "TFDS_"))
  }
  env["JAX_PLATFORMS"] = "cpu"
  return local.with_cpu_devices(env, devices)


def _start_training_on(devices, files, tmp_path):
  out = tmp_path / f"{devices}.npz"
  # Its own tfds directory: two builds of one dataset at once would race.
  tfds = tmp_path / f"tfds{devices}"
  process = subprocess.Popen(
    [
      sys.executable,
      __file__,
      str(files),
      str(tfds),
      str(tmp_path / f"run{devices}"),
      str(out),
    ],
    cwd=REPO,
    env=_env(devices),
  )
  return process, out


def _finished(started):
  process, out = started
  assert process.wait(timeout=600) == 0, f"the worker for {out} failed"
  return dict(np.load(out))


def test_eight_devices_train_like_one(mnist, tmp_path):
  # Both workers at once: each is mostly single-threaded compilation.
  started = [_start_training_on(n, mnist, tmp_path) for n in (1, 8)]
  try:
    one, eight = (_finished(s) for s in started)
  finally:
    for process, _ in started:
      process.kill()
  assert one.pop("devices") == 1 and eight.pop("devices") == 8
  assert one.keys() == eight.keys()
  for name in one:
    # Same global batch, split 8 ways: only the summation order differs,
    # and a few training steps amplify it to ~3e-5 on some CPUs.
    np.testing.assert_allclose(
      eight[name], one[name], rtol=1e-4, atol=1e-4, err_msg=name
    )
  assert {k.split("/")[0] for k in one} == set(RUNS)


def _steps(ckpt_dir):
  if not ckpt_dir.exists():
    return []
  return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


def test_sigkill_mid_epoch_then_restart_gives_the_uninterrupted_result(
  tmp_path,
):
  from cure_jax.data import fake_sources  # pylint: disable=g-import-not-at-top

  files = tmp_path / "files"
  fake_sources.write_fake_mnist(files, num_train=1600, num_test=8, seed=8)
  args = [
    f"--config={MNIST_CONFIG}:cpu=True,method=sabr",
    f"--config.dataset.data_dir={files}",
    "--config.dataset.download=False",
    "--config.model.name=mlp",
    f"--config.batch_size={GLOBAL_BATCH}",
    "--config.num_epochs=2",
    "--config.lr_milestones=(1,)",
    "--config.natural_epochs=0",
    "--config.eps_ramp_start=0",
    "--config.eps_ramp_end=1",
    "--config.checkpoint_every_steps=7",
    "--config.log_every_steps=1000",
    "--config.eval.final_examples=4",
    "--config.eval.batch_size=4",
    "--config.eval.final_methods=('ibp',)",
  ]
  straight, killed = tmp_path / "straight", tmp_path / "killed"

  def main(workdir):
    # Each run its own tfds directory: two builds at once would race.
    return [
      sys.executable,
      "-m",
      "cure_jax.main",
      *args,
      f"--config.dataset.tfds_data_dir={workdir}_tfds",
      f"--workdir={workdir}",
    ]

  # The uninterrupted run goes on beside the one that is killed.
  log = tmp_path / "straight.log"
  with open(log, "wb") as log_file:
    uninterrupted = subprocess.Popen(
      main(straight),
      cwd=REPO,
      env=_env(1),
      stdout=log_file,
      stderr=subprocess.STDOUT,
    )
  try:
    _kill_mid_epoch_and_restart(main(killed), killed)
    assert uninterrupted.wait(timeout=600) == 0, log.read_text()[-2000:]
  finally:
    uninterrupted.kill()
  sys.path.insert(0, str(REPO))
  from cure_jax import config_schema  # pylint: disable=g-import-not-at-top
  from cure_jax.checkpoint import restore_for_eval  # pylint: disable=g-import-not-at-top

  config = config_schema.load_config(f"{MNIST_CONFIG}:cpu=True,method=sabr")
  config.unlock()
  config_schema.apply_overrides(config, {"model.name": "mlp"})
  _, a = restore_for_eval(config, str(straight))
  _, b = restore_for_eval(config, str(killed))
  import jax  # pylint: disable=g-import-not-at-top

  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _kill_mid_epoch_and_restart(command, workdir):
  process = subprocess.Popen(
    command,
    cwd=REPO,
    env=_env(1),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.monotonic() + 300
  # 100 steps per epoch: kill once a checkpoint past step 20 exists, which
  # is in the middle of the first epoch.
  while not [s for s in _steps(workdir / "checkpoints") if s > 20]:
    assert process.poll() is None, "the run ended before it could be killed"
    assert time.monotonic() < deadline
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (workdir / "results.json").exists()
  assert max(_steps(workdir / "checkpoints")) < 200
  subprocess.run(
    command, check=True, cwd=REPO, env=_env(1), timeout=600, capture_output=True
  )


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  _worker(*sys.argv[1:5])
