"""What a training run will do, said before it starts: its folder and length.

Pure functions of the config and a few facts (no JAX), so that
``cure_jax.main`` can print them and tests can check them.
"""

import collections
import datetime
import math
import os
from collections.abc import Callable

import ml_collections

from cure_jax import config_schema

RUNS_ROOT = "runs"

# Seconds of one natural training step (clean CE, gradient, Adam) at batch
# 128 on MNIST-shaped input, on a 2-core CPU, measured (median of 5 steps) by
#   python -m cure_jax.benchmarks.train_step --models=cnn7 --methods=natural
#   python -m cure_jax.benchmarks.train_step --models=small_cnn \
#       --methods=natural,crown_ibp,pgd_linf,pgd_l2,l2,cure_joint,\
#       cure_random,cure_finetune,patch_ibp
# on a quiet moment of that machine (README, Performance: 0.028 and 1.38 s;
# with other jobs on the cores the small CNN's took up to 0.048 s).
NATURAL_STEP_SECONDS = {"small_cnn": 0.030, "cnn7": 1.16}
_REFERENCE_BATCH = 128
_REFERENCE_PIXELS = 28 * 28


def default_workdir(
  dataset: str,
  method: str,
  now: datetime.datetime,
  exists: Callable[[str], bool] = os.path.exists,
) -> str:
  """A fresh run folder, ``runs/<dataset>-<method>-<YYYYmmdd-HHMMSS>``.

  Args:
    dataset: ``config.dataset.name``.
    method: ``config.method``.
    now: the start time.
    exists: whether a path exists; a taken name gets ``-2``, ``-3``, ...
      appended, so that a new run never resumes another.

  Returns:
    The folder's path, relative to the working directory.
  """
  base = os.path.join(RUNS_ROOT, f"{dataset}-{method}-{now:%Y%m%d-%H%M%S}")
  path, suffix = base, 1
  while exists(path):
    suffix += 1
    path = f"{base}-{suffix}"
  return path


def training_steps(
  config: ml_collections.ConfigDict, num_train: int
) -> tuple[int, int]:
  """(all training steps, natural-epoch steps) of a run, as the loop counts them.

  Args:
    config: the run's config.
    num_train: size of the dataset's training split.
  """
  examples = config.dataset.train_examples or num_train
  per_epoch = examples // config.batch_size
  total = int(round(config.num_epochs * per_epoch))
  return total, min(total, int(config.natural_epochs * per_epoch))


def estimate_training_seconds(
  config: ml_collections.ConfigDict,
  num_train: int,
  input_shape: tuple[int, int, int],
  backend: str,
) -> float | None:
  """A rough estimate of a run's training time (final evaluation excluded).

    seconds ≈ t_nat · (B / 128) · (H·W / 28²) · (n_nat + κ_cost · n_robust)

  with t_nat the model's natural step at batch 128 on MNIST
  (`NATURAL_STEP_SECONDS`), κ_cost the method's `TrainingMethod.step_cost`
  and n the natural-epoch and remaining steps. Measured on a 2-core CPU
  only; expect it off by up to 2× (that machine's speed drifts; the ramp's
  warm-up regularizers and the pixel scaling across datasets are not
  measured).

  Args:
    config: the run's config.
    num_train: size of the dataset's training split.
    input_shape: (H, W, C) of the model's input.
    backend: ``jax.default_backend()``.

  Returns:
    Seconds, or None where the model says nothing: an accelerator, or a
    model other than `config_schema.STEP_COST_MODELS`.
  """
  model = config.model.name
  if backend != "cpu" or model not in config_schema.STEP_COST_MODELS:
    return None
  ratio = config_schema.check_method(config.method).step_cost[
    config_schema.STEP_COST_MODELS.index(model)
  ]
  height, width, _ = input_shape
  natural_step = (
    NATURAL_STEP_SECONDS[model]
    * (config.batch_size / _REFERENCE_BATCH)
    * (height * width / _REFERENCE_PIXELS)
  )
  total, natural = training_steps(config, num_train)
  return natural_step * (natural + ratio * (total - natural))


def format_duration(seconds: float) -> str:
  """'42 s', '7 min', '3.5 h'."""
  if seconds < 60:
    return f"{math.ceil(seconds)} s"
  if seconds < 3600:
    return f"{math.ceil(seconds / 60)} min"
  return f"{seconds / 3600:.1f} h"


def start_lines(
  *,
  config: ml_collections.ConfigDict,
  config_arg: str,
  backend: str,
  device_kinds: list[str],
  workdir: str,
  cpu_variant: bool,
  num_train: int,
  input_shape: tuple[int, int, int],
) -> list[str]:
  """What ``cure_jax.main`` prints before training.

  Args:
    config: the run's config.
    config_arg: the ``--config`` value the run was given.
    backend: ``jax.default_backend()``.
    device_kinds: ``device_kind`` of each device JAX uses.
    workdir: the run folder.
    cpu_variant: the ``cpu=auto`` default chose the CPU variant.
    num_train: size of the dataset's training split.
    input_shape: (H, W, C) of the model's input.

  Returns:
    Lines: backend and devices; the CPU-variant notice (one line, naming
    ``cpu=False``) where the default chose it; the run folder; the estimated
    length; a warning for a CPU run estimated over an hour.
  """
  kinds = collections.Counter(device_kinds)
  devices = ", ".join(f"{n} × {kind}" for kind, n in sorted(kinds.items()))
  lines = [f"JAX backend {backend}, devices: {devices}."]
  if cpu_variant:
    paper = config_schema.with_cpu_argument(config_arg, False)
    lines.append(
      f"No accelerator: running the CPU variant ({config.model.name}, "
      f"{config.num_epochs} epochs, minutes); for the paper's CNN7 schedule "
      f"pass --config={paper}"
    )
  lines.append(f"Run folder: {workdir}")
  total, _ = training_steps(config, num_train)
  seconds = estimate_training_seconds(config, num_train, input_shape, backend)
  if seconds is None:
    why = (
      f"no per-step cost is known for model {config.model.name!r}"
      if backend == "cpu"
      else f"per-step costs were timed on a 2-core CPU, not on {backend}"
    )
    lines.append(f"Estimated training time: unknown ({total} steps; {why}).")
    return lines
  lines.append(
    f"Estimated training time: about {format_duration(seconds)} ({total} "
    "steps; per-step costs timed on a 2-core CPU, off by up to 2×; final "
    "evaluation not included)."
  )
  if seconds > 3600:
    cpu = config_schema.with_cpu_argument(config_arg, True)
    lines.append(
      f"Warning: this run is estimated at {format_duration(seconds)} on this "
      f"CPU; the CPU variant (--config={cpu}) takes minutes."
    )
  return lines
