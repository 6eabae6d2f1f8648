"""Tests for cure_jax.parallel.distributed (the start-up decision).

A real 2-process run is in test_parallel_spmd.py.
"""

import jax
import pytest

from cure_jax import parallel
from cure_jax.parallel import distributed

SLURM_4_TASKS = {
  "SLURM_JOB_ID": "1234",
  "SLURM_STEP_NODELIST": "node[01-02]",
  "SLURM_NTASKS": "4",
  "SLURM_PROCID": "2",
  "SLURM_LOCALID": "0",
}
EXPLICIT_ENV = {
  "CURE_COORDINATOR": "10.0.0.1:1234",
  "CURE_NUM_PROCESSES": "4",
  "CURE_PROCESS_ID": "3",
}


def test_no_coordinates_and_no_cluster_is_single_process():
  assert parallel.resolve_config(environ={}) == parallel.DistributedConfig(
    "single", num_processes=1, process_id=0
  )


def test_coordinates_from_environment():
  config = parallel.resolve_config(environ=EXPLICIT_ENV)
  assert config == parallel.DistributedConfig(
    "explicit", "10.0.0.1:1234", 4, 3, None
  )


def test_arguments_override_environment():
  config = parallel.resolve_config(
    "host:99", 8, 5, local_device_ids=[0, 1], environ=EXPLICIT_ENV
  )
  assert config == parallel.DistributedConfig(
    "explicit", "host:99", 8, 5, (0, 1)
  )


@pytest.mark.parametrize(
  "environ",
  [
    {"CURE_NUM_PROCESSES": "1"},
    {
      "CURE_NUM_PROCESSES": "1",
      "CURE_PROCESS_ID": "0",
      "CURE_COORDINATOR": "127.0.0.1:5",
    },
  ],
)
def test_one_process_skips_initialization(environ):
  assert parallel.resolve_config(environ=environ).mode == "single"


@pytest.mark.parametrize(
  "environ, message",
  [
    (
      {"CURE_COORDINATOR": "h:1"},
      r"missing num_processes \(CURE_NUM_PROCESSES\), process_id "
      r"\(CURE_PROCESS_ID\)",
    ),
    (
      {"CURE_NUM_PROCESSES": "2", "CURE_PROCESS_ID": "0"},
      r"missing coordinator_address \(CURE_COORDINATOR\)",
    ),
    (
      dict(EXPLICIT_ENV, CURE_PROCESS_ID="4"),
      r"process_id=4 is outside \[0, 4\)",
    ),
    (dict(EXPLICIT_ENV, CURE_NUM_PROCESSES="0"), "num_processes must be >= 1"),
    (
      dict(EXPLICIT_ENV, CURE_COORDINATOR="10.0.0.1"),
      "must look like host:port",
    ),
    (
      dict(EXPLICIT_ENV, CURE_PROCESS_ID="one"),
      "CURE_PROCESS_ID='one' must be an integer",
    ),
    ({"CURE_DISTRIBUTED": "yes"}, "CURE_DISTRIBUTED=.yes. is not understood"),
    (dict(EXPLICIT_ENV, CURE_DISTRIBUTED="off"), "off contradicts"),
  ],
)
def test_bad_coordinates_are_explained(environ, message):
  with pytest.raises(ValueError, match=message):
    parallel.resolve_config(environ=environ)


def test_auto_mode_defers_to_jax_cluster_detection():
  config = parallel.resolve_config(environ={"CURE_DISTRIBUTED": "auto"})
  assert (config.mode, config.cluster) == ("cluster", "requested")
  # Explicit coordinates are more specific than auto-detection.
  config = parallel.resolve_config(
    environ=dict(EXPLICIT_ENV, CURE_DISTRIBUTED="auto")
  )
  assert config.mode == "explicit"


def test_multi_task_slurm_step_is_detected():
  config = parallel.resolve_config(environ=SLURM_4_TASKS)
  assert (config.mode, config.cluster) == ("cluster", "slurm")


@pytest.mark.parametrize(
  "environ",
  [
    dict(SLURM_4_TASKS, SLURM_NTASKS="1"),  # A single-task allocation.
    {k: v for k, v in SLURM_4_TASKS.items() if k != "SLURM_STEP_NODELIST"},
    dict(SLURM_4_TASKS, CURE_DISTRIBUTED="off"),
  ],
)
def test_single_task_or_incomplete_or_disabled_slurm_is_single(environ):
  assert parallel.resolve_config(environ=environ).mode == "single"


def test_open_mpi_job_is_detected():
  environ = {
    "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911",
    "OMPI_COMM_WORLD_SIZE": "2",
  }
  assert parallel.resolve_config(environ=environ).cluster == "openmpi"
  environ["OMPI_COMM_WORLD_SIZE"] = "1"
  assert parallel.resolve_config(environ=environ).mode == "single"


def test_single_local_device_id_becomes_tuple():
  config = parallel.resolve_config(local_device_ids=3, environ=SLURM_4_TASKS)
  assert config.local_device_ids == (3,)


def test_initialize_single_process_touches_nothing(monkeypatch):
  for name in (
    *EXPLICIT_ENV,
    *SLURM_4_TASKS,
    "CURE_DISTRIBUTED",
    "OMPI_MCA_orte_hnp_uri",
  ):
    monkeypatch.delenv(name, raising=False)
  assert parallel.initialize().mode == "single"
  assert not jax.distributed.is_initialized()
  assert parallel.is_main_process()
  distributed.barrier("no-op with one process")
