"""Global batch arithmetic: what each process loads, and padding of the tail.

`global_batch_size` in a config means the same on every topology: the number
of examples per optimizer step, summed over all devices and processes. Each
process loads `global_batch_size // process_count` of them; each device then
holds `global_batch_size // device_count`. Both divisions must be exact.
"""

import jax
import numpy as np
from jax.sharding import Mesh

from cure_jax.types import PyTree


def check_global_batch_size(
  global_batch_size: int, num_devices: int, num_processes: int
) -> int:
  """Returns `global_batch_size // num_processes` after checking it splits.

  Raises:
    ValueError: the batch is not positive or does not split evenly over the
      devices (the message gives the nearest valid sizes), or the devices do
      not split evenly over the processes.
  """
  if num_devices < 1 or num_processes < 1 or num_devices % num_processes:
    raise ValueError(
      f"{num_devices} devices cannot be spread evenly over {num_processes} "
      "processes; every process must hold the same number of devices."
    )
  if global_batch_size < 1 or global_batch_size % num_devices:
    lower = global_batch_size // num_devices * num_devices
    upper = lower + num_devices
    valid = f"{lower} or {upper}" if lower else f"{upper}"
    raise ValueError(
      f"Global batch size {global_batch_size} does not split evenly over "
      f"{num_devices} devices ({num_processes} processes): use a multiple "
      f"of {num_devices}, e.g. {valid}."
    )
  return global_batch_size // num_processes


def per_process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """`global_batch_size // jax.process_count()`, checked by
  `check_global_batch_size`."""
  return check_global_batch_size(
    global_batch_size, mesh.size, jax.process_count()
  )


def pad_batch(batch: PyTree, batch_size: int) -> tuple[PyTree, np.ndarray]:
  """Pads a short batch (the tail of an evaluation set) with zero rows.

  Compiled steps keep one batch shape, and every device needs an equal share,
  so the last, partial batch of an evaluation set is padded; weigh per-example
  results with the mask (e.g. `sum(mask * verified) / sum(mask)`).
  Returns `(padded, mask)`, mask bool [batch_size], True on the real rows.

  Raises:
    ValueError: if leaves disagree on the row count or exceed `batch_size`.
  """
  sizes = {
    np.shape(leaf)[0] if np.ndim(leaf) else None
    for leaf in jax.tree_util.tree_leaves(batch)
  }
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
      "pad_batch needs leaves with one common leading axis; "
      f"got leading sizes {sizes}."
    )
  num_rows = sizes.pop()
  if num_rows > batch_size:
    raise ValueError(
      f"The batch has {num_rows} rows, more than batch_size={batch_size}."
    )

  def pad(leaf):
    leaf = np.asarray(leaf)
    widths = [(0, batch_size - num_rows)] + [(0, 0)] * (leaf.ndim - 1)
    return np.pad(leaf, widths)

  mask = np.arange(batch_size) < num_rows
  return jax.tree_util.tree_map(pad, batch), mask
