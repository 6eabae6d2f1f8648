"""Data-parallel SPMD, multi-process start-up and precision policies.

The same program runs on one device, on the eight devices of one host and on
N hosts: `initialize()` joins the job (a no-op for one process), `make_mesh()`
lays every device on one `'data'` axis, parameters are `replicate`d, and each
process's batch of `global_batch_size // process_count` rows becomes a slice
of one global array with `shard_global_batch`. Steps are `jax.jit` functions.
"""

from cure_jax.parallel.distributed import (
  DistributedConfig,
  barrier,
  initialize,
  is_main_process,
  resolve_config,
  sum_over_processes,
)
from cure_jax.parallel.global_batch import (
  check_global_batch_size,
  pad_batch,
  per_process_batch_size,
)
from cure_jax.parallel.mesh import (
  DATA_AXIS,
  data_sharding,
  gather_to_host,
  make_mesh,
  replicate,
  replicated_sharding,
  shard_global_batch,
)
from cure_jax.parallel.precision import (
  CERTIFICATION,
  FLOAT32,
  MIXED_BFLOAT16,
  Policy,
  apply_with_policy,
  cast_floating,
  certification_precision,
  get_policy,
)

__all__ = [
  "CERTIFICATION",
  "DATA_AXIS",
  "DistributedConfig",
  "FLOAT32",
  "MIXED_BFLOAT16",
  "Policy",
  "apply_with_policy",
  "barrier",
  "sum_over_processes",
  "cast_floating",
  "certification_precision",
  "check_global_batch_size",
  "data_sharding",
  "gather_to_host",
  "get_policy",
  "initialize",
  "is_main_process",
  "make_mesh",
  "pad_batch",
  "per_process_batch_size",
  "replicate",
  "replicated_sharding",
  "resolve_config",
  "shard_global_batch",
]
