"""Data-parallel training gives one-device results on 8 devices and 2 hosts.

Run as a script, this file is the worker: it trains a small MLP (Adam, mean
cross-entropy) for a few steps on meshes of the requested sizes and process
0 writes the results to an .npz file. The tests start it in subprocesses,
since the number of (simulated CPU) devices and the multi-process set-up must
be fixed before JAX initializes.
"""

import argparse
import os
import pathlib
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 16
NUM_STEPS = 3
NUM_FEATURES, NUM_CLASSES = 6, 4


def _worker(out_path: str, mesh_sizes: list[int] | None) -> None:
  """Trains on each mesh size (default: all devices); writes the results."""
  from cure_jax import parallel  # pylint: disable=g-import-not-at-top

  parallel.initialize()  # From the CURE_* variables; none for one process.
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(NUM_CLASSES)(nn.relu(nn.Dense(16)(x)))

  model, optimizer = MLP(), optax.adam(1e-2)

  def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch["x"])
    per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["y"]
    )
    return per_example.mean(), per_example

  def train_step(state, batch):
    params, opt_state = state
    (loss, per_example), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, batch
    )
    updates, opt_state = optimizer.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), loss, per_example

  rng = np.random.default_rng(0)
  data = {
    "x": rng.normal(size=(NUM_STEPS, GLOBAL_BATCH, NUM_FEATURES)),
    "y": rng.integers(0, NUM_CLASSES, size=(NUM_STEPS, GLOBAL_BATCH)),
  }
  data["x"] = data["x"].astype(np.float32)
  params = model.init(jax.random.key(0), data["x"][0, :1])["params"]

  results = {}
  try:  # 3 rows per process cannot split over 2 or more local devices.
    parallel.shard_global_batch({"x": np.zeros((3, 1))}, parallel.make_mesh())
  except ValueError as e:
    results["split_error"] = np.array(str(e))
  for size in mesh_sizes or [jax.device_count()]:
    mesh = parallel.make_mesh(jax.devices()[:size])
    local_rows = parallel.per_process_batch_size(GLOBAL_BATCH, mesh)
    first = jax.process_index() * local_rows  # This process's rows.
    state = parallel.replicate((params, optimizer.init(params)), mesh)
    step = jax.jit(
      train_step,
      out_shardings=(
        parallel.replicated_sharding(mesh),
        parallel.replicated_sharding(mesh),
        parallel.data_sharding(mesh),
      ),
    )
    losses = []
    for t in range(NUM_STEPS):
      local = {k: v[t, first : first + local_rows] for k, v in data.items()}
      batch = parallel.shard_global_batch(local, mesh)
      assert batch["x"].shape == (GLOBAL_BATCH, NUM_FEATURES)
      assert len(batch["x"].addressable_shards) == len(mesh.local_devices)
      state, loss, per_example = step(state, batch)
      losses.append(float(loss))  # Replicated: readable on every process.
    final = parallel.gather_to_host(state[0])
    results[f"{size}/losses"] = np.array(losses)
    results[f"{size}/per_example"] = parallel.gather_to_host(per_example)
    # Compiled variants of the step: 1 unless shardings changed between steps.
    compilations = step._cache_size()  # pylint: disable=protected-access
    results[f"{size}/compilations"] = np.array(compilations)
    for path, leaf in jax.tree_util.tree_leaves_with_path(final):
      results[f"{size}/params{jax.tree_util.keystr(path)}"] = leaf
  # A collective: every process calls it.
  reduced = parallel.sum_over_processes(
    {"index": jax.process_index() + 1, "half": 0.5}
  )
  results["reduced"] = np.array([reduced["index"], reduced["half"]])
  if parallel.is_main_process():
    np.savez(out_path, process_count=jax.process_count(), **results)


def _run(command, cpu_devices=1, timeout=120):
  """Runs `command` on `cpu_devices` simulated CPU devices (per process)."""
  from launch import local  # pylint: disable=g-import-not-at-top

  env = local.with_cpu_devices(
    dict(
      os.environ,
      PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
      JAX_PLATFORMS="cpu",
    ),
    cpu_devices,
  )
  proc = subprocess.run(
    command,
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc


def _params(results, size):
  prefix = f"{size}/params"
  return {
    k[len(prefix) :]: results[k] for k in results.files if k.startswith(prefix)
  }


def _assert_same_training(results, size, reference, reference_size):
  np.testing.assert_allclose(
    results[f"{size}/losses"],
    reference[f"{reference_size}/losses"],
    rtol=1e-6,
    atol=1e-6,
  )
  np.testing.assert_allclose(
    results[f"{size}/per_example"],
    reference[f"{reference_size}/per_example"],
    rtol=1e-5,
    atol=1e-6,
  )
  params, reference_params = (
    _params(results, size),
    _params(reference, reference_size),
  )
  assert params.keys() == reference_params.keys() and params
  for name, value in params.items():
    np.testing.assert_allclose(
      value, reference_params[name], rtol=1e-6, atol=1e-6, err_msg=name
    )
  # Training moved the parameters: the comparison is not of initial values.
  assert len(set(np.round(results[f"{size}/losses"], 6))) == NUM_STEPS


def test_eight_devices_match_one_device_and_compile_once(tmp_path):
  out = tmp_path / "results.npz"
  _run(
    [sys.executable, __file__, f"--out={out}", "--mesh_sizes=8,1"],
    cpu_devices=8,
  )
  results = np.load(out)
  assert results["process_count"] == 1
  _assert_same_training(results, 8, results, 1)
  assert results["8/compilations"] == 1 and results["1/compilations"] == 1
  assert "multiple of 8" in str(results["split_error"])


def test_two_processes_match_one_process(tmp_path):
  single, multi = tmp_path / "single.npz", tmp_path / "multi.npz"
  _run([sys.executable, __file__, f"--out={single}"])
  # 2 processes x 2 CPU devices: a mesh of 4, 8 rows per process.
  _run(
    [
      sys.executable,
      str(REPO / "launch" / "local.py"),
      "--num_processes=2",
      "--cpu_devices_per_process=2",
      "--timeout=100",
      "--",
      sys.executable,
      __file__,
      f"--out={multi}",
    ],
  )
  reference, results = np.load(single), np.load(multi)
  assert results["process_count"] == 2
  _assert_same_training(results, 4, reference, 1)
  assert results["4/compilations"] == 1
  assert "multiple of 4" in str(results["split_error"])
  # Counters summed over the two processes (1 + 2, 0.5 + 0.5).
  np.testing.assert_array_equal(results["reduced"], [3.0, 1.0])
  np.testing.assert_array_equal(reference["reduced"], [1.0, 0.5])


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--mesh_sizes", default="")
  flags = parser.parse_args()
  _worker(flags.out, [int(s) for s in flags.mesh_sizes.split(",") if s])
