r"""Data-parallel scaling: train steps per second against device count.

  python -m cure_jax.benchmarks.scaling [--devices=1,2,4,8] [--model=small_cnn] \
      [--methods=natural,ibp] [--batch=128] [--simulate]

For each device count d, a fresh process (the device count is fixed when JAX
starts) jits the training step of `cure_jax.train.step` over a `Mesh` of d
devices exactly as the training loop does (replicated state, the global
batch split over ``'data'``) and times it on one random MNIST-shaped global
batch. ``--simulate`` makes d CPU devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=d`` (on a 2-core machine
they share the cores, so this measures the overhead of the SPMD program and
its collectives, not a speed-up); without it the first d real devices are
used. The global batch is the same for every d, so the work per step is.

Reports steps/s, the ratio to one device, and the bytes all-reduced per step
(the gradients: parameter count × 4 bytes), the communication a pod pays.
"""

import argparse
import json
import os
import subprocess
import sys


def _worker(
  devices: int, model_name: str, method: str, batch: int, repeats: int
) -> dict:
  """Times one configuration in this process (JAX initialized here)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from cure_jax.benchmarks.measure import median_seconds  # pylint: disable=g-import-not-at-top
  from cure_jax.config_schema import load_config  # pylint: disable=g-import-not-at-top
  from cure_jax.models import build_model  # pylint: disable=g-import-not-at-top
  from cure_jax.objectives.base import Batch  # pylint: disable=g-import-not-at-top
  from cure_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from cure_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from cure_jax.train import step as step_lib

  config_path = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "mnist.py"
  )
  config = load_config(f"{config_path}:method={method}")
  config.unlock()
  config.model.name, config.batch_size = model_name, batch
  config.lock()
  model = build_model(config)
  optimizer = state_lib.make_optimizer(config, 100)
  sched = step_lib.make_schedules(config, 100)
  state = state_lib.create_train_state(config, model, optimizer, (28, 28, 1))
  state = state._replace(step=jnp.asarray(sched.ramp_end + 1, jnp.int32))
  phase = step_lib.phase_at(config, sched, sched.ramp_end + 1)
  mesh = mesh_lib.make_mesh(jax.devices()[:devices])
  replicated = mesh_lib.replicated_sharding(mesh)
  step = jax.jit(
    step_lib.make_train_step(config, model, optimizer, sched, phase),
    in_shardings=(replicated, mesh_lib.data_sharding(mesh)),
    out_shardings=(replicated, replicated),
  )
  rng = np.random.default_rng(0)
  data = Batch(
    rng.uniform(size=(batch, 28, 28, 1)).astype(np.float32),
    rng.integers(0, 10, size=batch).astype(np.int32),
  )
  data = mesh_lib.shard_global_batch(data, mesh)
  state = mesh_lib.replicate(state, mesh)
  seconds = median_seconds(
    lambda s, b: step(s, b)[1]["loss"], state, data, repeats=repeats
  )
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  return dict(
    devices=devices,
    model=model_name,
    method=method,
    batch=batch,
    backend=jax.default_backend(),
    step_s=seconds,
    steps_per_s=1.0 / seconds,
    parameters=num_params,
    allreduce_bytes=4 * num_params,
  )


def run(
  device_counts,
  model_name="small_cnn",
  methods=("natural", "ibp"),
  batch=128,
  repeats=5,
  simulate=True,
):
  """Runs one subprocess per (method, device count); returns the rows."""
  rows = []
  for method in methods:
    base = None
    for devices in device_counts:
      env = dict(os.environ)
      if simulate:
        env["XLA_FLAGS"] = (
          f"{env.get('XLA_FLAGS', '')} --xla_force_host_"
          f"platform_device_count={devices}"
        ).strip()
        env["JAX_PLATFORMS"] = "cpu"
      out = subprocess.run(
        [
          sys.executable,
          "-m",
          "cure_jax.benchmarks.scaling",
          "--worker",
          f"--devices={devices}",
          f"--model={model_name}",
          f"--methods={method}",
          f"--batch={batch}",
          f"--repeats={repeats}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
      )
      row = json.loads(out.stdout.strip().splitlines()[-1])
      base = base or row["steps_per_s"]
      row["over_one_device"] = row["steps_per_s"] / base
      rows.append(row)
      print(json.dumps(row), flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--devices", default="1,2,4,8")
  parser.add_argument("--model", default="small_cnn")
  parser.add_argument("--methods", default="natural,ibp")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--simulate", action="store_true")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  counts = [int(d) for d in args.devices.split(",")]
  if args.worker:
    print(
      json.dumps(
        _worker(counts[0], args.model, args.methods, args.batch, args.repeats)
      )
    )
    return
  run(
    counts,
    args.model,
    args.methods.split(","),
    args.batch,
    args.repeats,
    args.simulate,
  )


if __name__ == "__main__":
  main()
