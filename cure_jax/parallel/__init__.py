"""Data-parallel SPMD, multi-process start-up and precision policies.

The same program runs on one device, on the eight devices of one host and on
N hosts: `initialize()` joins the job (a no-op for one process), `make_mesh()`
lays every device on one `'data'` axis, parameters are `replicate`d, and each
process's batch of `global_batch_size // process_count` rows becomes a slice
of one global array with `shard_global_batch`. Steps are `jax.jit` functions.
"""

from cure_jax.parallel.batching import check_global_batch_size
from cure_jax.parallel.batching import pad_batch
from cure_jax.parallel.batching import per_process_batch_size
from cure_jax.parallel.distributed import barrier
from cure_jax.parallel.distributed import DistributedConfig
from cure_jax.parallel.distributed import initialize
from cure_jax.parallel.distributed import is_main_process
from cure_jax.parallel.distributed import resolve_config
from cure_jax.parallel.distributed import sum_over_processes
from cure_jax.parallel.mesh import DATA_AXIS
from cure_jax.parallel.mesh import data_sharding
from cure_jax.parallel.mesh import gather_to_host
from cure_jax.parallel.mesh import make_mesh
from cure_jax.parallel.mesh import replicate
from cure_jax.parallel.mesh import replicated_sharding
from cure_jax.parallel.mesh import shard_global_batch
from cure_jax.parallel.precision import apply_with_policy
from cure_jax.parallel.precision import cast_floating
from cure_jax.parallel.precision import certification_precision
from cure_jax.parallel.precision import CERTIFICATION
from cure_jax.parallel.precision import FLOAT32
from cure_jax.parallel.precision import get_policy
from cure_jax.parallel.precision import MIXED_BFLOAT16
from cure_jax.parallel.precision import Policy

__all__ = [
    'CERTIFICATION',
    'DATA_AXIS',
    'DistributedConfig',
    'FLOAT32',
    'MIXED_BFLOAT16',
    'Policy',
    'apply_with_policy',
    'barrier',
    'sum_over_processes',
    'cast_floating',
    'certification_precision',
    'check_global_batch_size',
    'data_sharding',
    'gather_to_host',
    'get_policy',
    'initialize',
    'is_main_process',
    'make_mesh',
    'pad_batch',
    'per_process_batch_size',
    'replicate',
    'replicated_sharding',
    'resolve_config',
    'shard_global_batch',
]
