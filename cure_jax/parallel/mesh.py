"""Data-parallel SPMD over one mesh axis, on one or many hosts.

Every device of every process sits on a single mesh axis, `'data'`. Model
parameters and optimizer state are replicated; batches are split along their
leading axis. A step is then an ordinary `jax.jit` function:

  mesh = make_mesh()
  state = replicate(state, mesh)
  step = jax.jit(train_step, out_shardings=replicated_sharding(mesh))
  for local_batch in loader:  # global_batch // jax.process_count() rows each
    state, metrics = step(state, shard_global_batch(local_batch, mesh))

XLA inserts the gradient all-reduce: a `jnp.mean` over the batch axis of a
sharded array is a global mean, so losses, gradients and metrics are the same
as on one device with the same global batch (up to float summation order).
Pinning `out_shardings` to the sharding that `replicate` gives keeps the
state's sharding fixed from step to step, so the step compiles once.

The mesh axis type is `Auto`: sharding is propagated by the compiler through
any JAX function (bound transforms, attacks), with no per-op annotations.
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from cure_jax.types import PyTree

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the mesh `(len(devices),)`, axis `'data'` of type `Auto`.

  `devices` default to every device of every process (`jax.devices()`).
  """
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("make_mesh needs at least one device.")
  return jax.make_mesh(
    (len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices
  )


def data_sharding(mesh: Mesh) -> NamedSharding:
  """`NamedSharding(mesh, P('data'))`: the batch axis split over devices."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """`NamedSharding(mesh, P())`: a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def shard_global_batch(local_batch: PyTree, mesh: Mesh) -> PyTree:
  """Assembles the global batch from every process's local batch.

  Each process passes the rows it loaded (`global_batch // process_count`);
  they land on that process's devices, and the result is one global
  `jax.Array` per leaf, split along the leading axis over `'data'`. The rows
  of the global array are ordered by mesh position (process 0's first on the
  usual device orders); losses and metrics that average over the batch do
  not depend on that order.

  Raises:
    ValueError: if a leaf is a scalar, leading axes differ, or the rows do
      not split evenly over this process's devices.
  """
  num_rows = _common_leading_dim(local_batch)
  num_local_devices = len(mesh.local_devices)
  if num_rows % num_local_devices:
    raise ValueError(
      f"This process holds a batch of {num_rows} rows, which does not split "
      f"evenly over its {num_local_devices} devices (global batch "
      f"{num_rows * jax.process_count()} over {mesh.size} devices). Use a "
      f"global batch size that is a multiple of {mesh.size}."
    )
  return jax.make_array_from_process_local_data(
    data_sharding(mesh), local_batch
  )


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places a full copy of `tree` on every device of `mesh`.

  On several processes every process must pass the same values (e.g. params
  initialized from the same seed); this is not checked.
  """
  return jax.device_put(tree, replicated_sharding(mesh))


def gather_to_host(tree: PyTree) -> PyTree:
  """Fetches global arrays, sharded or not, as numpy arrays on every process.

  `jax.device_get` only reads what this process addresses; sharded outputs
  (e.g. per-example certification results) need this all-gather instead.
  A collective: every process must call it.
  """
  return multihost_utils.process_allgather(tree, tiled=True)


def _common_leading_dim(batch: PyTree) -> int:
  """Checks every leaf has the same leading axis; returns its length."""
  leaves = jax.tree_util.tree_leaves_with_path(batch)
  if not leaves:
    raise ValueError("The batch has no arrays.")
  sizes = {}
  for path, leaf in leaves:
    shape = np.shape(leaf)
    if not shape:
      raise ValueError(
        f"Batch leaf {jax.tree_util.keystr(path)} is a scalar; every leaf "
        "needs a leading batch axis (pass constants as separate, "
        "replicated arguments)."
      )
    sizes[jax.tree_util.keystr(path)] = shape[0]
  if len(set(sizes.values())) > 1:
    raise ValueError(f"Batch leaves disagree on the batch size: {sizes}.")
  return next(iter(sizes.values()))
