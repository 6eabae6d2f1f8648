"""Multi-process start-up: one JAX process per host (or per GPU).

`initialize()` is the first JAX call of the entry point. It decides how the
process joins the job, in this order:

1. Explicit coordinates, from the arguments or else from the environment
   variables the launch scripts set (`launch/local.py` sets all three):

     CURE_COORDINATOR     host:port of process 0's coordination service
     CURE_NUM_PROCESSES   total number of processes
     CURE_PROCESS_ID      this process's rank in [0, CURE_NUM_PROCESSES)

   `jax.distributed.initialize(coordinator_address, num_processes,
   process_id)` is called with them (skipped when there is one process).
2. `CURE_DISTRIBUTED=auto`: `jax.distributed.initialize()` with no arguments,
   so that JAX's cluster auto-detection fills everything in (Cloud TPU pods,
   Kubernetes, SLURM, Open MPI). `launch/tpu_pod.sh` sets it.
3. A multi-task SLURM step (`srun` with SLURM_NTASKS > 1) or an Open MPI job
   (`mpirun` with OMPI_COMM_WORLD_SIZE > 1) is detected here from its
   environment and also handed to JAX's auto-detection.
4. Otherwise the run is single-process and nothing is initialized.

`CURE_DISTRIBUTED=off` forces 4. Cross-process collectives on CPU use gloo
(`jax_cpu_collectives_implementation`, JAX's default in 0.10); GPUs use
NCCL and TPUs their interconnect without further set-up.

Only process 0 should write logs, summaries and other side outputs: guard
them with `is_main_process()`.
"""

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils

ENV_COORDINATOR = "CURE_COORDINATOR"
ENV_NUM_PROCESSES = "CURE_NUM_PROCESSES"
ENV_PROCESS_ID = "CURE_PROCESS_ID"
ENV_MODE = "CURE_DISTRIBUTED"

SINGLE = "single"
EXPLICIT = "explicit"
CLUSTER = "cluster"

# Environment variables that JAX's SLURM detection reads (all must be set).
_SLURM_VARS = (
  "SLURM_JOB_ID",
  "SLURM_STEP_NODELIST",
  "SLURM_NTASKS",
  "SLURM_PROCID",
  "SLURM_LOCALID",
)
_OMPI_URI = "OMPI_MCA_orte_hnp_uri"
_OMPI_SIZE = "OMPI_COMM_WORLD_SIZE"
_HOST_PORT = re.compile(r"^\[?[A-Za-z0-9_.:\-]+\]?:\d{1,5}$")


class DistributedConfig(NamedTuple):
  """How this process joins the job.

  `mode` is 'single' (no initialization; 1 process, rank 0), 'explicit'
  (coordinates given) or 'cluster' (JAX's auto-detection supplies them;
  `cluster` says what was detected: 'slurm', 'openmpi' or 'requested' by
  CURE_DISTRIBUTED=auto). `local_device_ids` None means all devices (JAX then
  reads JAX_LOCAL_DEVICE_IDS, or SLURM_LOCALID); it applies to multi-process
  runs only, a single process seeing what CUDA_VISIBLE_DEVICES shows it.
  """

  mode: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None
  cluster: str | None = None


def resolve_config(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: int | Sequence[int] | None = None,
  environ: Mapping[str, str] | None = None,
) -> DistributedConfig:
  """Returns the config `initialize` would act on, without touching JAX.

  Arguments override their CURE_* variables (see module doc); `environ`
  defaults to `os.environ`.

  Raises:
    ValueError: on partial or inconsistent coordinates, or a bad value of an
      environment variable; the message names the variable to fix.
  """
  environ = os.environ if environ is None else environ
  mode = environ.get(ENV_MODE, "").strip().lower()
  if mode not in ("", "auto", "off"):
    raise ValueError(
      f'{ENV_MODE}={environ[ENV_MODE]!r} is not understood: use "auto" '
      '(let JAX detect the cluster), "off" (single process) or leave it '
      "unset."
    )
  if isinstance(local_device_ids, int):
    local_device_ids = (local_device_ids,)
  elif local_device_ids is not None:
    local_device_ids = tuple(local_device_ids)

  if coordinator_address is None:
    coordinator_address = environ.get(ENV_COORDINATOR) or None
  if num_processes is None:
    num_processes = _int_from_env(environ, ENV_NUM_PROCESSES)
  if process_id is None:
    process_id = _int_from_env(environ, ENV_PROCESS_ID)
  explicit_given = any(
    v is not None for v in (coordinator_address, num_processes, process_id)
  )

  if mode == "off":
    if explicit_given:
      raise ValueError(
        f"{ENV_MODE}=off contradicts the coordinates given "
        f"({ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID} or "
        "arguments): unset one or the other."
      )
    return _single_config(local_device_ids)
  if explicit_given:
    return _explicit_config(
      coordinator_address, num_processes, process_id, local_device_ids
    )
  cluster = "requested" if mode == "auto" else _detect_cluster(environ)
  if cluster is None:
    return _single_config(local_device_ids)
  return DistributedConfig(
    CLUSTER, local_device_ids=local_device_ids, cluster=cluster
  )


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: int | Sequence[int] | None = None,
) -> DistributedConfig:
  """Joins the multi-process job, if any; call before any other JAX call.

  Single-process runs (no coordinates, no multi-task cluster) return at once
  without initializing anything, so the same entry point serves a laptop, one
  8-GPU host and a pod. Calling it again after a successful initialization is
  a no-op. Arguments as `resolve_config`; returns the config acted on.

  Raises:
    ValueError: see `resolve_config`.
    RuntimeError: from JAX, if a JAX computation already ran in this process.
  """
  config = resolve_config(
    coordinator_address, num_processes, process_id, local_device_ids
  )
  if config.mode == SINGLE or jax.distributed.is_initialized():
    return config
  # Cross-process collectives of the CPU backend (tests, CPU clusters). This
  # must be set before the backend exists; gloo is already JAX's default.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  device_ids = (
    None if config.local_device_ids is None else list(config.local_device_ids)
  )
  if config.mode == EXPLICIT:
    jax.distributed.initialize(
      coordinator_address=config.coordinator_address,
      num_processes=config.num_processes,
      process_id=config.process_id,
      local_device_ids=device_ids,
    )
  else:
    jax.distributed.initialize(local_device_ids=device_ids)
  logging.info(
    "JAX distributed: process %d of %d (%s), %d local devices.",
    jax.process_index(),
    jax.process_count(),
    config.cluster or config.coordinator_address,
    jax.local_device_count(),
  )
  return config


def is_main_process() -> bool:
  """Whether this is process 0, the one that writes logs and summaries."""
  return jax.process_index() == 0


def sum_over_processes(values: Mapping[str, float]) -> dict[str, float]:
  """Sums each named number over all processes (an all-gather of a vector).

  Every process must call it with the same names. Use it for counters that
  each process accumulates over its own share of the data (evaluation
  counts, seconds), so that every process ends with the global totals. With
  one process it returns the values unchanged (as floats).
  """
  names = sorted(values)
  local = np.asarray([float(values[n]) for n in names], np.float64)
  if jax.process_count() > 1:
    local = (
      np.asarray(multihost_utils.process_allgather(local))
      .reshape(jax.process_count(), -1)
      .sum(axis=0)
    )
  return {n: float(v) for n, v in zip(names, local)}


def barrier(name: str) -> None:
  """Blocks until every process reached the barrier called `name`.

  Use it around side effects one process makes for all, e.g. process 0
  writing a file that the others then read. All processes must pass the
  same `name`; a no-op with one process.
  """
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _explicit_config(
  coordinator_address, num_processes, process_id, local_device_ids
) -> DistributedConfig:
  """Validates explicit coordinates; one process means no initialization."""
  if num_processes is not None and num_processes < 1:
    raise ValueError(
      f"num_processes must be >= 1, got {num_processes} "
      f"(argument or {ENV_NUM_PROCESSES})."
    )
  if num_processes == 1 and process_id in (None, 0):
    return _single_config(local_device_ids)
  missing = [
    name
    for name, value in (
      (f"coordinator_address ({ENV_COORDINATOR})", coordinator_address),
      (f"num_processes ({ENV_NUM_PROCESSES})", num_processes),
      (f"process_id ({ENV_PROCESS_ID})", process_id),
    )
    if value is None
  ]
  if missing:
    raise ValueError(
      "Multi-process coordinates are incomplete: missing "
      f"{', '.join(missing)}. Give all three, or none for a single-process "
      f"run (or set {ENV_MODE}=auto to let JAX detect the cluster)."
    )
  if not 0 <= process_id < num_processes:
    raise ValueError(
      f"process_id={process_id} is outside [0, "
      f"{num_processes}) ({ENV_PROCESS_ID})."
    )
  if not _HOST_PORT.match(coordinator_address):
    raise ValueError(
      f"coordinator_address={coordinator_address!r} must look "
      f"like host:port, e.g. 10.0.0.1:1234 ({ENV_COORDINATOR})."
    )
  return DistributedConfig(
    EXPLICIT, coordinator_address, num_processes, process_id, local_device_ids
  )


def _single_config(local_device_ids) -> DistributedConfig:
  """The configuration of a run that initializes nothing."""
  return DistributedConfig(
    SINGLE, num_processes=1, process_id=0, local_device_ids=local_device_ids
  )


def _detect_cluster(environ: Mapping[str, str]) -> str | None:
  """Names a multi-task cluster launch that JAX can auto-detect, if any."""
  if (
    all(v in environ for v in _SLURM_VARS)
    and _int_from_env(environ, "SLURM_NTASKS") > 1
  ):
    return "slurm"
  if _OMPI_URI in environ and (_int_from_env(environ, _OMPI_SIZE) or 1) > 1:
    return "openmpi"
  return None


def _int_from_env(environ: Mapping[str, str], name: str) -> int | None:
  """Reads an integer environment variable; None when unset or empty."""
  value = environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} must be an integer.") from None
