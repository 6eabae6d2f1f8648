"""Checkpointing of the training state: periodic, atomic, verified, resumable.

`Checkpointer` is a thin layer over `orbax.checkpoint.CheckpointManager` that
adds the guarantees a long certified-training run needs to survive restarts:

* **Periodic + forced saves.** `save(step, state)` writes every
  `save_interval_steps` steps (and at JAX's multi-host preemption sync point);
  `save(..., force=True)` writes now (final and preemption saves). The newest
  `max_to_keep` checkpoints are kept.
* **Atomic saves.** Orbax writes into `<step>.orbax-checkpoint-tmp-*` and
  renames it to `<step>` once complete; a save killed half-way leaves only a tmp
  directory, which is never listed as a checkpoint (and is deleted when the next
  `Checkpointer` opens the directory).
* **No broken state on disk.** A state with a NaN/Inf leaf is refused before
  anything is written; a step that already exists is never overwritten.
* **Verified restores.** Every save records a per-leaf fingerprint of the exact
  bits written; restores check the checkpoint's tree and shapes against the
  target and the bits against the fingerprints. A truncated, garbled or
  mismatched checkpoint raises `CheckpointRestoreError` naming its path: the
  run never silently restarts from scratch nor resumes from corrupt weights.
* **Sharding-aware.** Arrays are restored straight into the target's shardings
  (any `jax.sharding.Sharding`, multi-host included) and dtypes.

Typical use, with `cure_jax.train.preemption.PreemptionGuard`::

  with PreemptionGuard() as guard, Checkpointer(workdir / 'ckpt') as ckpt:
    restored = ckpt.restore_latest(state)  # None on a fresh run.
    state = state if restored is None else restored
    step = int(state.step)
    while step < num_steps and not guard.should_stop(step):
      state = train_step(state, next(batches))
      step += 1
      ckpt.save(step, state, metadata={'config': config.to_dict()})
    ckpt.save(step, state, force=True)  # Final or preemption save.
"""

import contextlib
import json
import operator
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax import lax
from jax.experimental import multihost_utils

# Items of one checkpoint step (sub-directories of `<directory>/<step>/`).
_STATE = "state"
_INTEGRITY = "integrity"
_METADATA = "metadata"
_INTEGRITY_FORMAT = 1
# Problems listed per kind in a mismatch error before eliding the rest.
_MAX_LISTED = 5


class NonFiniteStateError(ValueError):
  """Raised when asked to save a training state that contains NaN or Inf."""


class CheckpointRestoreError(RuntimeError):
  """Raised when a checkpoint is corrupt or incompatible with the target.

  Attributes:
    path: the checkpoint step directory that could not be restored.
  """

  def __init__(self, path: Any, reason: str):
    self.path = str(path)
    super().__init__(
      f"Cannot restore the checkpoint at {self.path}: {reason}\n"
      "It is corrupt or incompatible with the current training state. "
      "Training will not silently start over: move this checkpoint aside "
      f"(e.g. `mv {self.path} {self.path}.bad`) to resume from the previous "
      "one, or pass a fresh workdir to start from scratch."
    )


# ---------------------------------------------------------------------------
# Leaves, paths and fingerprints.
# ---------------------------------------------------------------------------


def _key_name(key: Any) -> str:
  """The name of one pytree key, as orbax names it on disk."""
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _leaves_by_path(tree: Any) -> dict[str, Any]:
  """Leaves keyed by their `/`-joined path, e.g. ``'opt_state/0/mu/w'``.

  Named tuples and dataclasses contribute field names, dicts their keys and
  sequences their indices, so a NamedTuple state and orbax's on-disk dict of
  the same fields yield the same paths.

  Args:
    tree: any pytree.

  Returns:
    An insertion-ordered dict (pytree flattening order) from path to leaf.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  leaves = {"/".join(_key_name(k) for k in path): leaf for path, leaf in flat}
  if len(leaves) != len(flat):
    raise ValueError(
      'Two leaves of the pytree have the same path once joined with "/"; '
      'rename the keys that contain "/".'
    )
  return leaves


def _is_key_array(x: Any) -> bool:
  return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _check_array_leaves(tree: Any, what: str, allow_abstract: bool) -> None:
  """Raises TypeError unless every leaf of `tree` is an array.

  Args:
    tree: the pytree to check.
    what: how to call `tree` in the error message.
    allow_abstract: whether `jax.ShapeDtypeStruct` leaves are accepted.
  """
  kinds = (jax.Array, np.ndarray)
  if allow_abstract:
    kinds += (jax.ShapeDtypeStruct,)
  for path, leaf in _leaves_by_path(tree).items():
    if not isinstance(leaf, kinds):
      raise TypeError(
        f"{what} leaf {path!r} is a {type(leaf).__name__}; checkpoints hold "
        "pytrees of arrays only. Wrap Python/NumPy scalars with "
        "`jnp.asarray` (or mark static fields as non-pytree)."
      )


def _stored_shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
  """The shape and dtype orbax writes for `leaf` (PRNG keys as key data)."""
  if _is_key_array(leaf):
    leaf = jax.eval_shape(jax.random.key_data, leaf)
  return tuple(leaf.shape), np.dtype(leaf.dtype)


def _as_uint32_words(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words (one or two per element)."""
  if _is_key_array(x):
    x = jax.random.key_data(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    x = jnp.stack([x.real, x.imag], axis=-1)
  if jnp.issubdtype(x.dtype, jnp.floating):
    unsigned = {
      4: jnp.uint4,
      8: jnp.uint8,
      16: jnp.uint16,
      32: jnp.uint32,
      64: jnp.uint32,
    }[jnp.finfo(x.dtype).bits]
    x = lax.bitcast_convert_type(x, unsigned)  # 64-bit: trailing axis of 2.
  elif jnp.issubdtype(x.dtype, jnp.integer) and jnp.iinfo(x.dtype).bits == 64:
    x = lax.bitcast_convert_type(x, jnp.uint32)
  # Bools and <=32-bit integers: the cast to uint32 wraps, which is injective.
  return x.astype(jnp.uint32)


def _fingerprint(x: jax.Array) -> jax.Array:
  """Two uint32 checksums of the bits of `x`: (sum w_i, sum (2i+1) w_i).

  All arithmetic is mod 2^32. A change of one word w_i by d != 0 changes the
  second checksum by (2i+1) d != 0 (an odd factor is invertible mod 2^32), so
  corruption confined to one 32-bit word (any single bit flip, any one element
  of a <=32-bit dtype) is always detected; the position weights also catch
  swapped elements. Only elementwise ops and full reductions are used, so it
  runs on sharded arrays without resharding.

  Args:
    x: an array of any dtype, shape and sharding.

  Returns:
    A uint32 array of shape [2].
  """
  words = _as_uint32_words(x)
  index = jnp.zeros(words.shape, jnp.uint32)
  for axis, size in enumerate(words.shape):  # Row-major index, Horner form.
    index = index * jnp.uint32(size % 2**32) + lax.broadcasted_iota(
      jnp.uint32, words.shape, axis
    )
  weights = 2 * index + 1
  return jnp.stack(
    [
      jnp.sum(words, dtype=jnp.uint32),
      jnp.sum(words * weights, dtype=jnp.uint32),
    ]
  )


def _is_finite(x: jax.Array) -> jax.Array:
  if _is_key_array(x) or not jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.array(True)
  return jnp.all(jnp.isfinite(x))


@jax.jit
def _leaf_statistics(leaves: list[Any]) -> tuple[jax.Array, jax.Array]:
  """Per-leaf finiteness [L] and fingerprints [L, 2], in one compiled pass."""
  if not leaves:
    return jnp.zeros((0,), bool), jnp.zeros((0, 2), jnp.uint32)
  return (
    jnp.stack([_is_finite(x) for x in leaves]),
    jnp.stack([_fingerprint(x) for x in leaves]),
  )


def _to_host(x: jax.Array) -> np.ndarray:
  """Fetches a result to NumPy, also when it spans several processes."""
  if not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _host_statistics(x: np.ndarray) -> tuple[bool, list[int]]:
  """`_is_finite` and `_fingerprint` of a NumPy leaf, computed on the host.

  NumPy leaves (which may be 64-bit while JAX runs in 32-bit mode) never go
  to the device. The words are those of `_as_uint32_words` in row-major
  order, so both paths give the same fingerprint for the same bits.

  Args:
    x: a NumPy array.

  Returns:
    (whether all elements are finite, the two uint32 checksums).
  """
  finite = not jnp.issubdtype(x.dtype, jnp.inexact) or bool(
    np.isfinite(x).all()
  )
  words = np.ascontiguousarray(x).reshape(-1)
  if jnp.issubdtype(words.dtype, jnp.complexfloating):
    words = np.stack([words.real, words.imag], axis=-1).reshape(-1)
  if jnp.issubdtype(words.dtype, jnp.floating) or words.dtype.itemsize == 8:
    words = words.view(f"u{min(words.dtype.itemsize, 4)}")
  words = words.astype(np.uint32)
  weights = 2 * np.arange(words.size, dtype=np.uint32) + np.uint32(1)
  return finite, [
    int(words.sum(dtype=np.uint32)),
    int((words * weights).sum(dtype=np.uint32)),
  ]


def _statistics(tree: Any) -> tuple[dict[str, bool], dict[str, list[int]]]:
  """Finiteness and fingerprint of every leaf of `tree`, keyed by path."""
  leaves = _leaves_by_path(tree)
  on_device = [p for p, leaf in leaves.items() if isinstance(leaf, jax.Array)]
  finite, fingerprints = map(
    _to_host, _leaf_statistics([leaves[p] for p in on_device])
  )
  stats = dict(zip(on_device, zip(finite.tolist(), fingerprints.tolist())))
  stats.update(
    {p: _host_statistics(leaf) for p, leaf in leaves.items() if p not in stats}
  )
  return ({p: stats[p][0] for p in leaves}, {p: stats[p][1] for p in leaves})


# ---------------------------------------------------------------------------
# Validation helpers.
# ---------------------------------------------------------------------------


def _as_step(step: Any) -> int:
  try:
    step = operator.index(step)
  except TypeError:
    raise TypeError(
      f"step must be an integer, got {step!r} of type {type(step).__name__}."
    ) from None
  if step < 0:
    raise ValueError(f"step must be non-negative, got {step}.")
  return step


def _json_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
  """`metadata` as it reads back from JSON; raises if it is not JSON-able."""
  if metadata is None:
    return {}
  if not isinstance(metadata, Mapping):
    raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}.")
  try:
    return json.loads(json.dumps(dict(metadata), allow_nan=False))
  except (TypeError, ValueError) as error:
    raise TypeError(
      "metadata must be JSON-serialisable (str keys; str, number, bool, "
      f"None, list and dict values; finite floats): {error}. Convert e.g. "
      "arrays with `.tolist()` and configs with `.to_dict()`."
    ) from error


def _list_some(items: list[str]) -> str:
  shown = ", ".join(items[:_MAX_LISTED])
  more = len(items) - _MAX_LISTED
  return shown + (f" and {more} more" if more > 0 else "")


def _check_compatible(
  path: Any, saved_tree: Any, target: Any
) -> dict[str, np.dtype]:
  """Checks the checkpoint's leaves against the target's.

  Args:
    path: the checkpoint step directory, for error messages.
    saved_tree: orbax's metadata tree of the saved state.
    target: the pytree to restore into.

  Returns:
    The saved dtype of every leaf, keyed by path.

  Raises:
    CheckpointRestoreError: if the leaf paths or shapes differ.
  """
  saved = {
    p: (tuple(m.shape), np.dtype(m.dtype))
    for p, m in _leaves_by_path(saved_tree).items()
  }
  wanted = {
    p: _stored_shape_dtype(leaf) for p, leaf in _leaves_by_path(target).items()
  }
  problems = []
  missing = [p for p in wanted if p not in saved]
  if missing:
    problems.append(
      f"leaves missing from the checkpoint: {_list_some(missing)}"
    )
  unexpected = [p for p in saved if p not in wanted]
  if unexpected:
    problems.append(
      f"checkpoint leaves absent from the target: {_list_some(unexpected)}"
    )
  reshaped = [
    f"{p} (checkpoint {saved[p][0]}, target {shape})"
    for p, (shape, _) in wanted.items()
    if p in saved and saved[p][0] != shape
  ]
  if reshaped:
    problems.append(f"shape mismatches: {_list_some(reshaped)}")
  if problems:
    raise CheckpointRestoreError(
      path,
      "its state does not match the target structure; "
      + "; ".join(problems)
      + ".",
    )
  return {p: dtype for p, (_, dtype) in saved.items()}


def _restore_template(target: Any, saved_dtypes: dict[str, np.dtype]) -> Any:
  """Abstract leaves with the target's shapes and shardings, saved dtypes.

  Restoring in the saved dtype lets the fingerprints be checked on the exact
  bits on disk; `_cast_to_target` then converts to the target's dtypes.
  PRNG key leaves keep their key dtype (orbax restores those natively).

  Args:
    target: the pytree to restore into.
    saved_dtypes: dtype on disk per leaf path.

  Returns:
    A pytree of `jax.ShapeDtypeStruct` (for jax leaves) and zero-stride NumPy
    arrays (for NumPy leaves, so they restore as NumPy).
  """

  def template(path, leaf):
    dtype = leaf.dtype if _is_key_array(leaf) else saved_dtypes[path]
    if isinstance(leaf, np.ndarray):
      return np.broadcast_to(np.zeros((), dtype), leaf.shape)
    return jax.ShapeDtypeStruct(
      leaf.shape, dtype, sharding=getattr(leaf, "sharding", None)
    )

  leaves = _leaves_by_path(target)
  treedef = jax.tree_util.tree_structure(target)
  return jax.tree_util.tree_unflatten(
    treedef, [template(p, leaf) for p, leaf in leaves.items()]
  )


def _cast_to_target(restored: Any, target: Any) -> Any:
  def cast(x, t):
    if x.dtype == t.dtype:
      return x
    logging.warning(
      "Casting restored %s %s leaf to the target dtype %s.",
      x.shape,
      x.dtype,
      t.dtype,
    )
    return x.astype(t.dtype)  # Elementwise: keeps the sharding.

  return jax.tree.map(cast, restored, target)


# ---------------------------------------------------------------------------
# The checkpointer.
# ---------------------------------------------------------------------------


class Checkpointer:
  """Periodic, atomic and verified checkpoints of a pytree training state.

  Every process of a multi-host job must construct it and call `save`,
  `restore*` and `close` with the same arguments (orbax synchronises them).
  Not thread-safe; one `Checkpointer` per directory.
  """

  def __init__(
    self,
    directory: str | os.PathLike[str],
    *,
    max_to_keep: int | None = 3,
    save_interval_steps: int = 1000,
    async_save: bool = True,
  ):
    """Opens (creating it if needed) a checkpoint directory.

    Stale temporary directories of interrupted saves are deleted.

    Args:
      directory: where step sub-directories `<step>/` live; a local path or
        any URI orbax supports (e.g. `gs://`).
      max_to_keep: how many of the newest checkpoints to keep; None keeps all.
      save_interval_steps: `save` writes at steps that are multiples of this.
      async_save: write in a background thread after the (blocking) copy to
        host memory; `wait_until_finished`, `close` and restores wait for it.
    """
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(
        f"max_to_keep must be >= 1 or None (keep all), got {max_to_keep}."
      )
    if save_interval_steps < 1:
      raise ValueError(
        f"save_interval_steps must be >= 1, got {save_interval_steps}."
      )
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_decision_policy=policies.AnySavePolicy(
        [
          policies.FixedIntervalPolicy(save_interval_steps),
          policies.PreemptionCheckpointingPolicy(),
        ]
      ),
      create=True,
      cleanup_tmp_directories=True,
      enable_async_checkpointing=async_save,
    )
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(_STATE, ocp.args.StandardSave)
    registry.add(_STATE, ocp.args.StandardRestore)
    for item in (_INTEGRITY, _METADATA):
      registry.add(item, ocp.args.JsonSave)
      registry.add(item, ocp.args.JsonRestore)
    self._manager = ocp.CheckpointManager(
      directory, options=options, handler_registry=registry
    )

  @property
  def directory(self) -> Any:
    """The checkpoint directory (an `etils.epath.Path`)."""
    return self._manager.directory

  @property
  def all_steps(self) -> tuple[int, ...]:
    """The steps of all complete checkpoints, ascending."""
    return tuple(sorted(self._manager.all_steps()))

  @property
  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none."""
    return self._manager.latest_step()

  def step_path(self, step: int) -> Any:
    """The directory of the checkpoint of `step`."""
    return self.directory / str(step)

  def save(
    self,
    step: int,
    state: Any,
    *,
    metadata: Mapping[str, Any] | None = None,
    force: bool = False,
  ) -> bool:
    """Saves `state` at `step` if due (or forced); never overwrites.

    Args:
      step: the training step the state belongs to.
      state: a pytree of arrays (e.g. a NamedTuple TrainState with optax
        states); may be sharded over a mesh.
      metadata: small JSON-able dict stored alongside (config snapshot,
        dataset position, ...); see `read_metadata`.
      force: save even if `step` is not a multiple of `save_interval_steps`.

    Returns:
      Whether a checkpoint was written. False when the save is not due or a
      checkpoint for `step` already exists (it is kept as is).

    Raises:
      NonFiniteStateError: if a leaf of `state` holds NaN or Inf (nothing is
        written, older checkpoints stay intact).
      ValueError: if `step` is older than the latest checkpoint.
      TypeError: if `state` has non-array leaves or `metadata` is not JSON-able.
    """
    step = _as_step(step)
    latest = self.latest_step
    if latest is not None and step < latest:
      raise ValueError(
        f"Cannot save step {step}: the newest checkpoint in {self.directory} "
        f"is step {latest}, so this state belongs to another run (a resume "
        "would ignore it). Resume with `restore_latest` before training, or "
        "use a fresh directory."
      )
    if step == latest:
      logging.info("Checkpoint of step %d already exists; keeping it.", step)
      return False
    if not (force or self._manager.should_save(step)):
      return False
    metadata = _json_metadata(metadata)
    _check_array_leaves(state, "state", allow_abstract=False)
    finite, fingerprints = _statistics(state)
    bad = [path for path, ok in finite.items() if not ok]
    if bad:
      raise NonFiniteStateError(
        f"Refusing to save step {step}: state leaf {bad[0]!r} contains NaN "
        f"or Inf ({len(bad)} non-finite leaves: {_list_some(bad)}). Nothing "
        f"was written; the checkpoints in {self.directory} are intact. "
        "Training has diverged: resume from the latest checkpoint with a "
        "lower learning rate or stronger gradient clipping."
      )
    integrity = {
      "format": _INTEGRITY_FORMAT,
      "step": step,
      "fingerprints": fingerprints,
    }
    return self._manager.save(
      step,
      force=True,
      args=ocp.args.Composite(
        **{
          _STATE: ocp.args.StandardSave(state),
          _INTEGRITY: ocp.args.JsonSave(integrity),
          _METADATA: ocp.args.JsonSave(metadata),
        }
      ),
    )

  def restore(self, step: int, target: Any) -> Any:
    """Restores the checkpoint of `step` into the structure of `target`.

    Args:
      step: a step in `all_steps`.
      target: a pytree of `jax.Array`, `jax.ShapeDtypeStruct` (with a
        `sharding`, e.g. from `jax.eval_shape`) or NumPy arrays giving the
        structure, shapes, dtypes and shardings to restore into.

    Returns:
      The restored state: the structure of `target`, each leaf with the
      target's dtype and sharding (NumPy leaves stay NumPy).

    Raises:
      FileNotFoundError: if there is no checkpoint of `step`.
      CheckpointRestoreError: if the checkpoint is corrupt (unreadable files,
        fingerprint mismatch) or does not match `target`'s tree or shapes.
    """
    step = _as_step(step)
    self.wait_until_finished()
    if step not in self._manager.all_steps():
      raise FileNotFoundError(
        f"No checkpoint of step {step} in {self.directory}; available "
        f"steps: {list(self.all_steps)}."
      )
    _check_array_leaves(target, "target", allow_abstract=True)
    path = self.step_path(step)
    with _restore_errors(path):
      saved = self._manager.item_metadata(step)
      if saved.get(_STATE) is None or _INTEGRITY not in saved:
        raise CheckpointRestoreError(
          path,
          f"it lacks the {_STATE!r} or {_INTEGRITY!r} item, so it was "
          "not written by `cure_jax.train.checkpoint.Checkpointer`.",
        )
      saved_dtypes = _check_compatible(path, saved[_STATE], target)
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          **{
            _STATE: ocp.args.StandardRestore(
              _restore_template(target, saved_dtypes)
            ),
            _INTEGRITY: ocp.args.JsonRestore(),
          }
        ),
      )
      _verify_integrity(path, step, restored[_STATE], restored[_INTEGRITY])
    return _cast_to_target(restored[_STATE], target)

  def restore_latest(self, target: Any) -> Any | None:
    """Restores the newest checkpoint into `target` (see `restore`).

    Args:
      target: as in `restore`.

    Returns:
      The restored state, or None if the directory holds no complete
      checkpoint (a fresh run).

    Raises:
      CheckpointRestoreError: if the newest checkpoint is corrupt or
        incompatible; older ones are never used silently instead.
    """
    self.wait_until_finished()
    step = self.latest_step
    if step is None:
      return None
    logging.info("Restoring checkpoint %s.", self.step_path(step))
    return self.restore(step, target)

  def read_metadata(self, step: int | None = None) -> dict[str, Any] | None:
    """The metadata dict saved with `step` (default: the newest checkpoint).

    Args:
      step: a step in `all_steps`, or None for the latest.

    Returns:
      The dict given to `save` (as read back from JSON), or None if the
      directory holds no checkpoint.

    Raises:
      FileNotFoundError: if there is no checkpoint of `step`.
      CheckpointRestoreError: if the metadata file is unreadable.
    """
    self.wait_until_finished()
    step = self.latest_step if step is None else _as_step(step)
    if step is None:
      return None
    if step not in self._manager.all_steps():
      raise FileNotFoundError(
        f"No checkpoint of step {step} in {self.directory}; available "
        f"steps: {list(self.all_steps)}."
      )
    with _restore_errors(self.step_path(step)):
      restored = self._manager.restore(
        step, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()})
      )
    return restored[_METADATA]

  def wait_until_finished(self) -> None:
    """Blocks until the pending asynchronous save (if any) is on disk.

    Raises:
      Exception: the error of a background save that failed.
    """
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases orbax's resources."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


@contextlib.contextmanager
def _restore_errors(path: Any) -> Iterator[None]:
  """Turns any failure to read the checkpoint at `path` into a clear error."""
  try:
    yield
  except CheckpointRestoreError:
    raise
  except Exception as error:  # pylint: disable=broad-exception-caught
    reason = f"{type(error).__name__}: {error}".strip()
    if len(reason) > 600:  # TensorStore errors embed whole JSON specs.
      reason = reason[:600] + " ..."
    raise CheckpointRestoreError(path, reason) from error


def _verify_integrity(
  path: Any, step: int, restored: Any, integrity: Any
) -> None:
  """Checks the restored bits against the fingerprints taken at save time."""
  if (
    not isinstance(integrity, Mapping)
    or integrity.get("format") != _INTEGRITY_FORMAT
  ):
    raise CheckpointRestoreError(
      path,
      f"its integrity record is unreadable or of an unknown format: "
      f"{str(integrity)[:200]}.",
    )
  if integrity.get("step") != step:
    raise CheckpointRestoreError(
      path,
      f"it records step {integrity.get('step')} but is stored as step "
      f"{step} (was the directory renamed?).",
    )
  expected = integrity["fingerprints"]
  _, actual = _statistics(restored)
  corrupt = [p for p, fp in actual.items() if expected.get(p) != fp]
  if corrupt or set(expected) != set(actual):
    corrupt += sorted(set(expected) - set(actual))
    raise CheckpointRestoreError(
      path,
      "restored data does not match the fingerprints recorded at "
      f"save time (data corruption) in leaves {_list_some(corrupt)}.",
    )
