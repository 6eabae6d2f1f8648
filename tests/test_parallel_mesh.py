"""Tests for cure_jax.parallel.mesh on this process's devices.

Multi-device and multi-process behaviour is tested in test_parallel_spmd.py.
"""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from cure_jax import parallel


def test_make_mesh_lays_all_devices_on_one_auto_data_axis():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == (parallel.DATA_AXIS,) == ("data",)
  assert mesh.size == jax.device_count()
  assert mesh.axis_types == (AxisType.Auto,)
  assert list(mesh.devices.flat) == jax.devices()


def test_make_mesh_takes_explicit_devices_and_rejects_none():
  assert parallel.make_mesh(jax.devices()[:1]).size == 1
  with pytest.raises(ValueError, match="at least one device"):
    parallel.make_mesh([])


def test_shardings_split_batch_axis_or_replicate():
  mesh = parallel.make_mesh()
  assert parallel.data_sharding(mesh).spec == PartitionSpec("data")
  assert parallel.replicated_sharding(mesh).spec == PartitionSpec()
  assert parallel.replicated_sharding(mesh).mesh == mesh


def test_shard_global_batch_keeps_structure_values_and_shards_rows():
  mesh = parallel.make_mesh()
  local = {
    "image": np.arange(24, dtype=np.float32).reshape(4, 2, 3),
    "label": np.array([3, 1, 0, 2]),
  }
  batch = parallel.shard_global_batch(local, mesh)
  assert jax.tree_util.tree_structure(batch) == (
    jax.tree_util.tree_structure(local)
  )
  for key, value in local.items():
    assert batch[key].sharding == parallel.data_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(batch[key]), value)


@pytest.mark.parametrize(
  "batch, message",
  [
    ({}, "no arrays"),
    ({"x": np.zeros((4, 2)), "eps": np.float32(0.1)}, r"\['eps'\] is a scalar"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(3)}, "disagree on the batch size"),
  ],
)
def test_shard_global_batch_rejects_malformed_batches(batch, message):
  with pytest.raises(ValueError, match=message):
    parallel.shard_global_batch(batch, parallel.make_mesh())


def test_replicate_places_full_copy_and_gather_fetches_numpy():
  mesh = parallel.make_mesh()
  tree = {"w": np.arange(6.0).reshape(2, 3), "b": np.ones(3, np.float32)}
  replicated = parallel.replicate(tree, mesh)
  assert all(
    leaf.sharding == parallel.replicated_sharding(mesh)
    and leaf.is_fully_replicated
    for leaf in jax.tree_util.tree_leaves(replicated)
  )
  fetched = parallel.gather_to_host(replicated)
  for key, value in tree.items():
    assert isinstance(fetched[key], np.ndarray)
    np.testing.assert_array_equal(fetched[key], value)


def test_jitted_step_keeps_replicated_sharding_and_compiles_once():
  mesh = parallel.make_mesh()
  step = jax.jit(
    lambda w, batch: (w - 0.1 * batch.mean(0), batch.sum()),
    out_shardings=parallel.replicated_sharding(mesh),
  )
  w = parallel.replicate(np.zeros(3, np.float32), mesh)
  for t in range(3):
    batch = parallel.shard_global_batch(np.full((2, 3), t, np.float32), mesh)
    w, total = step(w, batch)
  np.testing.assert_allclose(np.asarray(w), -0.3 * np.ones(3), rtol=1e-6)
  assert float(total) == 12.0
  assert step._cache_size() == 1  # pylint: disable=protected-access
