"""Tests for cure_jax.train.checkpoint."""

import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cure_jax.train import checkpoint
from cure_jax.train.checkpoint import (
  Checkpointer,
  CheckpointRestoreError,
  NonFiniteStateError,
)


class TrainState(NamedTuple):
  step: jax.Array
  params: dict[str, jax.Array]
  batch_stats: dict[str, jax.Array]
  opt_state: Any
  rng: jax.Array


@jax.jit
def make_state(seed: int | jax.Array = 0) -> TrainState:
  """A small state with every awkward kind of leaf the trainer will have."""
  keys = jax.random.split(jax.random.key(seed), 4)
  params = {
    "dense": {
      "kernel": jax.random.normal(keys[0], (16, 32)),
      "bias": jax.random.normal(keys[1], (32,), jnp.bfloat16),
    },
    "scale": jnp.float32(seed + 1.5),
  }
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  opt_state = tx.init(params)  # ((EmptyState(), ScaleByAdamState), ...).
  # One Adam update so that mu/nu/count are not all zeros/ones.
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.25 * (seed + 1)), params)
  _, opt_state = tx.update(grads, opt_state, params)
  return TrainState(
    step=jnp.int32(seed),
    params=params,
    batch_stats={"mean": jax.random.uniform(keys[2], (32,))},
    opt_state=opt_state,
    rng=keys[3],  # A typed PRNG key array.
  )


def bits(x: Any) -> np.ndarray:
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.atleast_1d(np.asarray(x)).view(np.uint8)


def assert_bitwise_equal(actual: Any, expected: Any) -> None:
  assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(
    expected
  )
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert type(a) is type(e)
    assert a.dtype == e.dtype and a.shape == e.shape
    np.testing.assert_array_equal(bits(a), bits(e))
    if isinstance(e, jax.Array):
      assert a.sharding == e.sharding


def step_dirs(directory: pathlib.Path) -> list[str]:
  return sorted(p.name for p in directory.iterdir())


def data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The files holding array bytes (not metadata), largest first."""
  files = [
    p
    for p in (step_dir / "state").rglob("*")
    if p.is_file() and p.parent.name == "d"
  ]
  return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


@pytest.fixture
def ckpt_dir(tmp_path):
  return tmp_path / "ckpt"


def test_round_trip_is_bitwise_exact_with_metadata(ckpt_dir):
  state = make_state(1)
  with Checkpointer(ckpt_dir, save_interval_steps=10) as ckpt:
    assert ckpt.save(
      10,
      state,
      metadata={"config": {"lr": 1e-3}, "epoch": 3, "tags": ("a", "b")},
    )
    restored = ckpt.restore(10, make_state(0))
    metadata = ckpt.read_metadata(10)
  assert_bitwise_equal(restored, state)
  assert isinstance(restored, TrainState)
  assert isinstance(restored.opt_state[1][0], optax.ScaleByAdamState)
  assert isinstance(restored.opt_state[0], optax.EmptyState)
  assert metadata == {"config": {"lr": 1e-3}, "epoch": 3, "tags": ["a", "b"]}


def test_save_schedule_and_no_overwrite(ckpt_dir):
  first, second = make_state(1), make_state(2)
  with Checkpointer(ckpt_dir, save_interval_steps=5, max_to_keep=None) as ckpt:
    assert not ckpt.save(3, first)  # Not due: nothing written.
    assert ckpt.save(5, first)
    assert not ckpt.save(5, second)  # Existing step is kept as is ...
    assert not ckpt.save(5, second, force=True)  # ... even when forced.
    assert ckpt.save(7, first, force=True)  # Forced: final/preemption save.
    assert not ckpt.save(8, first)
    assert ckpt.save(10, first)
    with pytest.raises(ValueError, match="newest checkpoint .* is step 10"):
      ckpt.save(9, first, force=True)
    assert ckpt.all_steps == (5, 7, 10)
    assert_bitwise_equal(ckpt.restore(5, second), first)
  assert step_dirs(ckpt_dir) == ["10", "5", "7"]


def test_keeps_only_the_newest_checkpoints(ckpt_dir):
  with Checkpointer(ckpt_dir, max_to_keep=2, save_interval_steps=1) as ckpt:
    for step in range(1, 6):
      assert ckpt.save(step, make_state(step))
    assert ckpt.all_steps == (4, 5)
  assert step_dirs(ckpt_dir) == ["4", "5"]


def test_resume_restores_the_latest_checkpoint(ckpt_dir):
  with Checkpointer(ckpt_dir, save_interval_steps=1) as ckpt:
    assert ckpt.restore_latest(make_state(0)) is None  # Fresh run.
    assert ckpt.read_metadata() is None
    for step in (1, 2, 3):
      ckpt.save(step, make_state(step), metadata={"position": step * 10})
  # A new process: a new Checkpointer on the same directory.
  with Checkpointer(ckpt_dir, save_interval_steps=1) as ckpt:
    assert ckpt.latest_step == 3
    assert_bitwise_equal(ckpt.restore_latest(make_state(0)), make_state(3))
    assert ckpt.read_metadata() == {"position": 30}


def test_restores_into_abstract_target_and_casts_dtypes(ckpt_dir):
  state = make_state(1)
  with Checkpointer(ckpt_dir) as ckpt:
    ckpt.save(1, state, force=True)
    abstract = jax.eval_shape(make_state, 0)  # No sharding: default device.
    restored = ckpt.restore(1, abstract)
    assert_bitwise_equal(restored, state)
    as_f16 = state._replace(
      batch_stats={"mean": state.batch_stats["mean"].astype(jnp.float16)}
    )
    restored = ckpt.restore(1, as_f16)
  assert restored.batch_stats["mean"].dtype == jnp.float16
  np.testing.assert_array_equal(
    restored.batch_stats["mean"], state.batch_stats["mean"].astype(jnp.float16)
  )
  assert_bitwise_equal(restored.params, state.params)


@pytest.mark.parametrize("bad_value", [jnp.nan, jnp.inf])
def test_refuses_non_finite_state_and_keeps_previous(ckpt_dir, bad_value):
  good = make_state(1)
  kernel = good.params["dense"]["kernel"]
  bad = good._replace(
    params={
      **good.params,
      "dense": {
        **good.params["dense"],
        "kernel": kernel.at[3, 4].set(bad_value),
      },
    },
    batch_stats={"mean": good.batch_stats["mean"].at[0].set(bad_value)},
  )
  with Checkpointer(ckpt_dir, save_interval_steps=1) as ckpt:
    ckpt.save(1, good)
    with pytest.raises(
      NonFiniteStateError,
      match=r"step 2: state leaf 'params/dense/kernel'.*"
      r"2 non-finite leaves.*batch_stats/mean",
    ):
      ckpt.save(2, bad, force=True)
    assert ckpt.all_steps == (1,)
  assert step_dirs(ckpt_dir) == ["1"]  # Not even a tmp directory.
  with Checkpointer(ckpt_dir) as ckpt:
    assert_bitwise_equal(ckpt.restore_latest(make_state(0)), good)


def _garbage_metadata(step_dir):
  (step_dir / "state" / "_METADATA").write_bytes(b"\x00not json\xff" * 8)


def _truncate_data(step_dir):
  for path in data_files(step_dir):
    os.truncate(path, path.stat().st_size // 2)


def _garbage_data(step_dir):
  for path in data_files(step_dir):
    path.write_bytes(b"garbage")


def _flip_one_bit(step_dir):
  path = data_files(step_dir)[0]
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x10
  path.write_bytes(bytes(data))


def _data_of_another_step(step_dir):
  """Well-formed files, wrong bytes: only the fingerprints can tell."""
  shutil.rmtree(step_dir / "state")
  shutil.copytree(step_dir.parent / "1" / "state", step_dir / "state")


def _garbage_integrity(step_dir):
  for path in (step_dir / "integrity").iterdir():
    path.write_bytes(b'{"format": 1, "st')


# Orbax's event loop may report TensorStore callbacks that arrive after a failed
# read closed it; that is harmless and not what these tests are about.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
  "corrupt",
  [
    _garbage_metadata,
    _truncate_data,
    _garbage_data,
    _flip_one_bit,
    _data_of_another_step,
    _garbage_integrity,
  ],
)
def test_corrupt_checkpoint_raises_clear_error(ckpt_dir, corrupt):
  with Checkpointer(ckpt_dir, save_interval_steps=1) as ckpt:
    ckpt.save(1, make_state(1))
    ckpt.save(2, make_state(2))
  corrupt(ckpt_dir / "2")
  with Checkpointer(ckpt_dir) as ckpt:
    with pytest.raises(CheckpointRestoreError) as error:
      ckpt.restore_latest(make_state(0))
  assert error.value.path == str(ckpt_dir / "2")
  assert f"{ckpt_dir / '2'}" in str(error.value)
  assert "move this checkpoint aside" in str(error.value)
  assert "fresh workdir" in str(error.value)
  if corrupt is _data_of_another_step:  # Readable: caught by fingerprints.
    assert "data corruption" in str(error.value)
    assert "params/dense/kernel" in str(error.value)
  # Following the advice resumes from the previous checkpoint.
  (ckpt_dir / "2").rename(ckpt_dir / "2.bad")
  with Checkpointer(ckpt_dir) as ckpt:
    assert_bitwise_equal(ckpt.restore_latest(make_state(0)), make_state(1))


def test_incompatible_target_raises_clear_error(ckpt_dir):
  state = make_state(1)
  with Checkpointer(ckpt_dir) as ckpt:
    ckpt.save(1, state, force=True)
    renamed = state._replace(batch_stats={"var": state.batch_stats["mean"]})
    with pytest.raises(
      CheckpointRestoreError,
      match=r"missing from the checkpoint: batch_stats/var;"
      r" checkpoint leaves absent from the target: "
      r"batch_stats/mean",
    ):
      ckpt.restore(1, renamed)
    resized = state._replace(batch_stats={"mean": jnp.zeros(33)})
    with pytest.raises(
      CheckpointRestoreError,
      match=re.escape("batch_stats/mean (checkpoint (32,), target (33,))"),
    ):
      ckpt.restore(1, resized)
    with pytest.raises(FileNotFoundError, match=r"available steps: \[1\]"):
      ckpt.restore(2, state)


def test_interrupted_save_is_ignored_and_cleaned_up(ckpt_dir):
  with Checkpointer(ckpt_dir, save_interval_steps=1) as ckpt:
    ckpt.save(1, make_state(1))
    ckpt.save(2, make_state(2))
  # A save of step 3 killed half-way: orbax's tmp directory, partly written.
  stale = ckpt_dir / "3.orbax-checkpoint-tmp-1700000000123456"
  shutil.copytree(ckpt_dir / "2", stale)
  _truncate_data(stale)
  with Checkpointer(ckpt_dir, save_interval_steps=1) as ckpt:
    assert ckpt.latest_step == 2
    assert_bitwise_equal(ckpt.restore_latest(make_state(0)), make_state(2))
    assert ckpt.save(3, make_state(3))  # The step can be saved again.
  assert step_dirs(ckpt_dir) == ["1", "2", "3"]


def test_bad_arguments_raise_helpful_errors(ckpt_dir):
  with pytest.raises(ValueError, match="max_to_keep"):
    Checkpointer(ckpt_dir, max_to_keep=0)
  with pytest.raises(ValueError, match="save_interval_steps"):
    Checkpointer(ckpt_dir, save_interval_steps=0)
  with Checkpointer(ckpt_dir) as ckpt:
    with pytest.raises(TypeError, match="JSON-serialisable"):
      ckpt.save(1, make_state(), metadata={"x": np.zeros(2)}, force=True)
    with pytest.raises(TypeError, match="leaf 'lr' is a float"):
      ckpt.save(1, {"lr": 0.1, "w": jnp.ones(2)}, force=True)
    with pytest.raises(TypeError, match="step must be an integer"):
      ckpt.save(1.0, make_state(), force=True)
    assert ckpt.all_steps == ()


@pytest.mark.parametrize(
  "dtype", [jnp.float32, jnp.bfloat16, jnp.int8, jnp.uint32, jnp.bool_]
)
def test_fingerprint_detects_any_single_bit_flip_and_swaps(dtype):
  values = np.arange(15).reshape(3, 5) * 7 + 1
  x = np.asarray(values % 3 == 0 if dtype == jnp.bool_ else values, dtype)
  raw = x.reshape(-1).view(np.uint8)
  # Every single-bit flip of x (only bit 0 for bools, to stay valid bools).
  flips = [
    (byte, bit)
    for byte in range(raw.size)
    for bit in range(1 if dtype == jnp.bool_ else 8)
  ]
  variants = np.stack([raw] * len(flips))
  for row, (byte, bit) in enumerate(flips):
    variants[row, byte] ^= np.uint8(1 << bit)
  variants = variants.view(x.dtype).reshape((len(flips),) + x.shape)
  # A swap of two different elements.
  swapped = x.copy()
  swapped[0, 0], swapped[2, 4] = x[2, 4], x[0, 0]
  assert x[0, 0] != x[2, 4]
  fingerprints = jax.jit(jax.vmap(checkpoint._fingerprint))(
    jnp.asarray(np.concatenate([variants, swapped[None], x[None]]))
  )
  fingerprints = np.asarray(fingerprints)
  reference = fingerprints[-1]
  np.testing.assert_array_equal(
    np.asarray(checkpoint._fingerprint(jnp.asarray(x))), reference
  )
  assert np.all(np.any(fingerprints[:-1] != reference, axis=1))


@pytest.mark.parametrize(
  "dtype", [np.float32, jnp.bfloat16, np.int8, np.uint16, np.bool_]
)
def test_host_and_device_fingerprints_agree(dtype):
  values = np.arange(-12, 12).reshape(2, 3, 4) * 3
  x = np.asarray(values % 2 == 0 if dtype == np.bool_ else values, dtype)
  _, on_host = checkpoint._host_statistics(x)
  on_device = np.asarray(checkpoint._fingerprint(jnp.asarray(x)))
  assert on_host == on_device.tolist()


def test_numpy_leaves_round_trip_as_numpy(ckpt_dir):
  """Host-side leaves (e.g. a data-iterator position) stay NumPy, even 64-bit
  ones that JAX cannot hold without x64."""
  state = {
    "position": np.array([2**40 + 3, -7], np.int64),
    "host_stats": np.linspace(0.0, 1.0, 5),  # float64.
    "params": jnp.arange(4.0),
  }
  with Checkpointer(ckpt_dir) as ckpt:
    ckpt.save(1, state, force=True)
    template = jax.tree.map(np.zeros_like, state)
    template["params"] = jnp.zeros(4)
    restored = ckpt.restore_latest(template)
    assert_bitwise_equal(restored, state)
    nan_state = {**state, "host_stats": np.array([0.0, np.nan])}
    with pytest.raises(NonFiniteStateError, match="'host_stats'"):
      ckpt.save(2, nan_state, force=True)


_TWO_PROCESS_WORKER = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P
    process_id, port, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f'localhost:{port}', num_processes=2,
                               process_id=process_id,
                               initialization_timeout=60)
    from cure_jax.train.checkpoint import Checkpointer, NonFiniteStateError
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = jax.make_mesh((4,), ('data',))
    rows = NamedSharding(mesh, P('data', None))
    cols = NamedSharding(mesh, P(None, 'data'))

    def global_array(value, sharding):
      return jax.make_array_from_callback(value.shape, sharding,
                                          lambda index: value[index])

    x = np.arange(8 * 12, dtype=np.float32).reshape(8, 12)
    state = {'w': global_array(x, rows),
             'b': global_array(x[0], NamedSharding(mesh, P()))}
    with Checkpointer(directory) as ckpt:
      assert ckpt.save(1, state, force=True)
      x_nan = x.copy()
      x_nan[7, 3] = np.nan  # Row 7 lives on a device of process 1 only.
      try:
        ckpt.save(2, {**state, 'w': global_array(x_nan, rows)}, force=True)
        raise AssertionError('A NaN state was saved.')
      except NonFiniteStateError as error:
        assert "leaf 'w'" in str(error), error
    # Restore with other shardings than saved: orbax reshards on read.
    target = {
        'w': jax.ShapeDtypeStruct((8, 12), jnp.float32, sharding=cols),
        'b': jax.ShapeDtypeStruct((12,), jnp.float32,
                                  sharding=NamedSharding(mesh, P('data'))),
    }
    with Checkpointer(directory) as ckpt:
      assert ckpt.all_steps == (1,)
      restored = ckpt.restore_latest(target)
    assert restored['w'].sharding == target['w'].sharding
    assert restored['b'].sharding == target['b'].sharding
    for name, expected in (('w', x), ('b', x[0])):
      np.testing.assert_array_equal(
          multihost_utils.process_allgather(restored[name], tiled=True),
          expected)
    print('OK', flush=True)
""")


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def test_two_process_mesh_save_refuse_nan_and_reshard(ckpt_dir):
  """2 processes x 2 CPU devices: arrays span processes, as on a pod."""
  port = str(_free_port())
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
  )
  workers = [
    subprocess.Popen(
      [sys.executable, "-c", _TWO_PROCESS_WORKER, str(i), port, str(ckpt_dir)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  for worker in workers:
    stdout, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 0 and "OK" in stdout, stderr[-3000:]
  assert step_dirs(ckpt_dir) == ["1"]
