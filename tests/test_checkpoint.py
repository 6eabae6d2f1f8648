"""Tests for cure_jax.checkpoint: exact resume, no NaN on disk, clear errors."""

import logging
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cure_jax.checkpoint import (
  Checkpointer,
  CheckpointRestoreError,
  NoCheckpointError,
  NonFiniteStateError,
  restore_variables,
)
from launch import local

REPO = pathlib.Path(__file__).resolve().parents[1]
# Orbax's event loop may report TensorStore reads that finish after a failed
# restore closed it; harmless, and not what these tests are about.
pytestmark = pytest.mark.filterwarnings(
  "ignore::pytest.PytestUnraisableExceptionWarning"
)


class TrainState(NamedTuple):
  step: jax.Array
  params: dict[str, Any]
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
  opt_state = tx.init(params)  # ((EmptyState(), ScaleByAdamState), ...)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.25 * (seed + 1)), params)
  _, opt_state = tx.update(grads, opt_state, params)  # mu, nu, count != 0
  return TrainState(
    step=jnp.int32(seed),
    params=params,
    batch_stats={"mean": jax.random.uniform(keys[2], (32,))},
    opt_state=opt_state,
    rng=keys[3],  # a typed PRNG key
  )


def bits(x: Any) -> np.ndarray:
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.atleast_1d(np.asarray(x)).view(np.uint8)


def assert_bitwise_equal(actual: Any, expected: Any) -> None:
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert isinstance(a, jax.Array)
    assert a.dtype == e.dtype and a.shape == e.shape
    np.testing.assert_array_equal(bits(a), bits(e))


def step_dirs(directory: pathlib.Path) -> list[str]:
  return sorted(p.name for p in directory.iterdir())


def data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The files holding array bytes (not metadata)."""
  return [
    p
    for p in (step_dir / "state").rglob("*")
    if p.is_file() and p.parent.name == "d"
  ]


@pytest.fixture
def ckpt_dir(tmp_path):
  return tmp_path / "ckpt"


def test_round_trip_is_bitwise_exact(ckpt_dir):
  state = make_state(1)
  with Checkpointer(ckpt_dir) as ckpt:
    assert ckpt.save(10, state, force=True)
    restored = ckpt.restore(10, make_state(0))
    assert_bitwise_equal(restored, state)
    # An abstract target (no values, no sharding) restores the same bits.
    assert_bitwise_equal(ckpt.restore(10, jax.eval_shape(make_state, 0)), state)
  assert isinstance(restored, TrainState)
  assert isinstance(restored.opt_state[1][0], optax.ScaleByAdamState)
  assert isinstance(restored.opt_state[0], optax.EmptyState)


def test_save_schedule_and_no_overwrite(ckpt_dir):
  first, second = make_state(1), make_state(2)
  with Checkpointer(ckpt_dir, save_interval_steps=5, max_to_keep=None) as ckpt:
    assert not ckpt.save(3, first)  # not due: nothing written
    assert ckpt.save(5, first)
    assert not ckpt.save(5, second)  # an existing step is kept as is ...
    assert not ckpt.save(5, second, force=True)  # ... even when forced
    assert ckpt.save(7, first, force=True)  # final or preemption save
    assert not ckpt.save(8, first)
    assert ckpt.save(10, first)
    assert ckpt.all_steps == (5, 7, 10)
    assert_bitwise_equal(ckpt.restore(5, second), first)
  assert step_dirs(ckpt_dir) == ["10", "5", "7"]


def test_keeps_only_the_newest_checkpoints(ckpt_dir):
  with Checkpointer(ckpt_dir, max_to_keep=2, save_interval_steps=1) as ckpt:
    for step in range(1, 6):
      assert ckpt.save(step, make_state(step))
  assert step_dirs(ckpt_dir) == ["4", "5"]


def test_resume_in_a_new_process_restores_the_latest(ckpt_dir):
  with Checkpointer(ckpt_dir, save_interval_steps=1) as ckpt:
    assert ckpt.restore_latest(make_state(0)) is None  # a fresh run
    for step in (1, 2, 3):
      ckpt.save(step, make_state(step))
  with Checkpointer(ckpt_dir, save_interval_steps=1) as ckpt:
    assert ckpt.latest_step == 3
    assert_bitwise_equal(ckpt.restore_latest(make_state(0)), make_state(3))


@pytest.mark.parametrize("bad_value", [jnp.nan, jnp.inf])
def test_refuses_a_non_finite_state_and_keeps_the_last_good_one(
  ckpt_dir, bad_value
):
  good = make_state(1)
  dense = good.params["dense"]
  bad = good._replace(
    params={
      **good.params,
      "dense": {**dense, "kernel": dense["kernel"].at[3, 4].set(bad_value)},
    },
    batch_stats={"mean": good.batch_stats["mean"].at[0].set(bad_value)},
  )
  with Checkpointer(ckpt_dir, save_interval_steps=1) as ckpt:
    ckpt.save(1, good)
    with pytest.raises(
      NonFiniteStateError,
      match=r"step 2: state leaf .*kernel.*2 non-finite leaves.*mean",
    ):
      ckpt.save(2, bad, force=True)
    assert ckpt.all_steps == (1,)
  assert step_dirs(ckpt_dir) == ["1"]  # not even a tmp directory
  with Checkpointer(ckpt_dir) as ckpt:
    assert_bitwise_equal(ckpt.restore_latest(make_state(0)), good)


def _truncate_data(step_dir):
  for path in data_files(step_dir):
    os.truncate(path, path.stat().st_size // 2)


def _delete_data(step_dir):
  for path in data_files(step_dir):
    path.unlink()


def _garbage_metadata(step_dir):
  (step_dir / "state" / "_METADATA").write_bytes(b"\x00not json\xff" * 8)


def _delete_state(step_dir):
  shutil.rmtree(step_dir / "state")


@pytest.mark.parametrize(
  "corrupt", [_truncate_data, _delete_data, _garbage_metadata, _delete_state]
)
def test_corrupt_checkpoint_raises_an_error_that_says_what_to_do(
  ckpt_dir, corrupt
):
  with Checkpointer(ckpt_dir, save_interval_steps=1) as ckpt:
    ckpt.save(1, make_state(1))
    ckpt.save(2, make_state(2))
  corrupt(ckpt_dir / "2")
  with Checkpointer(ckpt_dir) as ckpt:
    with pytest.raises(CheckpointRestoreError) as error:
      ckpt.restore_latest(make_state(0))  # never falls back silently
  assert error.value.path == str(ckpt_dir / "2")
  message = str(error.value)
  assert f"mv {ckpt_dir / '2'} {ckpt_dir / '2'}.bad" in message
  assert "delete the directory or point --workdir elsewhere" in message
  # Following the advice resumes from the checkpoint before it.
  (ckpt_dir / "2").rename(ckpt_dir / "2.bad")
  with Checkpointer(ckpt_dir) as ckpt:
    assert_bitwise_equal(ckpt.restore_latest(make_state(0)), make_state(1))


def test_a_different_structure_or_shape_raises_a_clear_error(ckpt_dir):
  state = make_state(1)
  with Checkpointer(ckpt_dir) as ckpt:
    ckpt.save(1, state, force=True)
    for target, detail in (
      (state._replace(batch_stats={"mean": jnp.zeros(33)}), "(33,)"),
      (state._replace(batch_stats={"var": jnp.zeros(32)}), "batch_stats.var"),
    ):
      with pytest.raises(CheckpointRestoreError) as error:
        ckpt.restore(1, target)
      assert detail in str(error.value)
      assert "the config differs from the one that wrote it" in str(error.value)


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
    assert ckpt.save(3, make_state(3))  # the step can be saved again
  assert step_dirs(ckpt_dir) == ["1", "2", "3"]


def _variables(state):
  return {"params": state.params, "batch_stats": state.batch_stats}


def test_restore_variables_reads_params_and_batch_stats_only(ckpt_dir, caplog):
  with Checkpointer(ckpt_dir, save_interval_steps=1) as ckpt:
    ckpt.save(1, make_state(1))
    ckpt.save(2, make_state(2))
  # A save of step 3 still being written by a live run is not read.
  shutil.copytree(ckpt_dir / "2", ckpt_dir / "3.orbax-checkpoint-tmp-17000")
  template = jax.eval_shape(lambda: _variables(make_state(0)))
  caplog.set_level(logging.WARNING)
  variables = restore_variables(str(ckpt_dir), template)
  assert_bitwise_equal(variables, _variables(make_state(2)))
  # Read only, and quietly: nothing written, cleaned up or warned about.
  assert step_dirs(ckpt_dir) == ["1", "2", "3.orbax-checkpoint-tmp-17000"]
  assert not [r.getMessage() for r in caplog.records if r.levelno >= 30]
  bigger = {**template, "batch_stats": {"mean": jnp.zeros(33)}}
  with pytest.raises(CheckpointRestoreError, match="differs"):
    restore_variables(str(ckpt_dir), bigger)
  with pytest.raises(CheckpointRestoreError, match="'ema'"):
    restore_variables(str(ckpt_dir), {**template, "ema": template["params"]})


def test_restore_variables_of_no_checkpoint_says_to_train_first(tmp_path):
  missing = tmp_path / "nothing"
  with pytest.raises(NoCheckpointError, match="no checkpoint in .*train first"):
    restore_variables(str(missing), {"params": {}})
  assert not missing.exists()  # nothing created
  missing.mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    restore_variables(str(missing), {"params": {}})


def test_importing_it_does_not_import_training():
  code = (
    "import sys, cure_jax.checkpoint; "
    "print(sorted(m for m in sys.modules if m.startswith('cure_jax.train')))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code],
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    capture_output=True,
    text=True,
    check=True,
  )
  assert result.stdout.strip() == "[]", result.stdout


_TWO_PROCESS_WORKER = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P
    process_id, port, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f'localhost:{port}', num_processes=2,
                               process_id=process_id,
                               initialization_timeout=60)
    from cure_jax.checkpoint import Checkpointer, NonFiniteStateError
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
      x_nan[7, 3] = np.nan  # row 7 lives on a device of process 1 only
      try:
        ckpt.save(2, {**state, 'w': global_array(x_nan, rows)}, force=True)
        raise AssertionError('a NaN state was saved')
      except NonFiniteStateError as error:
        assert "['w']" in str(error), error
    # Other shardings than saved: orbax reshards on read.
    target = {
        'w': jax.ShapeDtypeStruct((8, 12), jnp.float32, sharding=cols),
        'b': jax.ShapeDtypeStruct((12,), jnp.float32,
                                  sharding=NamedSharding(mesh, P('data'))),
    }
    with Checkpointer(directory) as ckpt:
      assert ckpt.all_steps == (1,)
      restored = ckpt.restore_latest(target)
    assert restored['w'].sharding == target['w'].sharding
    for name, expected in (('w', x), ('b', x[0])):
      np.testing.assert_array_equal(
          multihost_utils.process_allgather(restored[name], tiled=True),
          expected)
    print('OK', flush=True)
""")


def test_two_processes_refuse_nan_on_either_and_reshard(ckpt_dir):
  """2 processes x 2 CPU devices: arrays span processes, as on a pod."""
  port = str(local.free_port("localhost"))
  env = local.with_cpu_devices(
    dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)), 2
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
