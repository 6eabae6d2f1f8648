"""Checkpoints of the training state: a thin layer over orbax's CheckpointManager.

Orbax checks tree structure and shapes on restore, restores into the target's
dtypes and shardings, and writes atomically (a tmp directory renamed once
complete), so a save killed half-way never becomes the latest checkpoint. On
top of it: a state with NaN/Inf is never saved (`NonFiniteStateError`), every
failed restore is a `CheckpointRestoreError` that says what to do, and
evaluation reads the model variables alone, with no optimizer
(`restore_variables`, `restore_for_eval`)::

  with Checkpointer(checkpoint_dir(workdir)) as ckpt:
    state = ckpt.restore_latest(template) or template
    ckpt.save(step, state)              # every `save_interval_steps` steps
    ckpt.save(step, state, force=True)  # final or preemption save
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from cure_jax.data import dataset_info
from cure_jax.models import build_model
from cure_jax.types import PyTree

_STATE = "state"  # the one orbax item of a step: `<directory>/<step>/state`
_MAX_REASON = 600  # characters; TensorStore errors embed whole JSON specs


class NonFiniteStateError(ValueError):
  """Raised when asked to save a training state that holds NaN or Inf."""


class CheckpointRestoreError(RuntimeError):
  """A checkpoint cannot be restored; ``path`` names it, the message the fix."""

  def __init__(self, path, reason: str):
    self.path = str(path)
    super().__init__(
      f"Cannot restore the checkpoint at {self.path}: {reason}\n"
      "Either the config differs from the one that wrote it (restore with "
      "that config), or the checkpoint is corrupt or partial: move it aside "
      f"(`mv {self.path} {self.path}.bad`) to resume from the one before, or "
      "delete the directory or point --workdir elsewhere to start over."
    )


class NoCheckpointError(CheckpointRestoreError, FileNotFoundError):
  """The checkpoint directory is missing or holds no checkpoint."""

  def __init__(self, path):
    self.path = str(path)
    Exception.__init__(
      self,
      f"no checkpoint in {self.path}: train first (python -m cure_jax.main "
      "--config=... --workdir=...) or point --workdir at a trained run.",
    )


def checkpoint_dir(workdir: str) -> str:
  """Where the checkpoints of the run in ``workdir`` live."""
  return os.path.join(workdir, "checkpoints")


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def _non_finite_leaves(state: PyTree) -> list[str]:
  """Paths of the floating leaves of ``state`` that hold NaN or Inf."""
  floating = [
    (jax.tree_util.keystr(path), leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state)
    if jnp.issubdtype(leaf.dtype, jnp.inexact)
  ]
  if not floating:
    return []
  flags = _finite_flags([leaf for _, leaf in floating])  # one pass, any mesh
  flags = np.asarray(multihost_utils.process_allgather(flags, tiled=True))
  return [path for (path, _), ok in zip(floating, flags) if not ok]


def _abstract(tree: PyTree) -> PyTree:
  """Shape, dtype and sharding of every leaf (the default device if none)."""
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default
    ),
    tree,
  )


def _registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """The one item of a step, ``state``: a pytree."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  registry.add(_STATE, ocp.args.PyTreeSave)
  registry.add(_STATE, ocp.args.PyTreeRestore)
  return registry


def _restore_args(abstract: PyTree) -> ocp.args.PyTreeRestore:
  """Orbax's arguments to read ``abstract``'s leaves; leaves set to
  ``ocp.PLACEHOLDER`` (orbax's marker for "do not read") are skipped."""
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
  return ocp.args.PyTreeRestore(abstract, restore_args=restore_args)


def _restore_state(step_dir, target, partial, saved_tree, read) -> PyTree:
  """``target``'s items of one step's state; every failure a
  `CheckpointRestoreError` naming ``step_dir``.

  Args:
    step_dir: the step's directory (for the error).
    target: as for `Checkpointer.restore`.
    partial: as for `Checkpointer.restore`.
    saved_tree: () -> the saved state's tree metadata (read when partial).
    read: abstract state (leaves `jax.ShapeDtypeStruct` or
      ``ocp.PLACEHOLDER``) -> the restored state.
  """
  abstract = _abstract(target)
  try:
    if partial:  # the saved items not in target: ocp.PLACEHOLDER, not read
      saved = saved_tree()
      if not set(target) <= set(saved):
        raise KeyError(f"it holds {sorted(saved)}, not all of {list(target)}")
      abstract = {
        **jax.tree.map(lambda _: ocp.PLACEHOLDER, saved),
        **abstract,
      }
    restored = read(abstract)
  except Exception as error:  # pylint: disable=broad-exception-caught
    reason = f"{type(error).__name__}: {error}"[:_MAX_REASON]
    raise CheckpointRestoreError(step_dir, reason) from error
  return {k: restored[k] for k in target} if partial else restored


class Checkpointer:
  """Periodic, atomic checkpoints of a pytree state in ``directory/<step>``.

  Args:
    directory: where the step directories live (created unless read_only).
    max_to_keep: how many of the newest checkpoints to keep; None: all.
    save_interval_steps: `save` writes at multiples of this step (and at
      JAX's multi-host preemption sync point).
    async_save: write in the background once the state is on the host.
    read_only: never write nor delete (e.g. evaluation beside a live run).

  Every process of a multi-host job makes the same calls (orbax syncs them).
  """

  def __init__(
    self,
    directory: str | os.PathLike[str],
    *,
    max_to_keep: int | None = 3,
    save_interval_steps: int = 1000,
    async_save: bool = True,
    read_only: bool = False,
  ):
    every = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else max_to_keep,
      save_interval_steps=0 if read_only else save_interval_steps,
      save_decision_policy=every.AnySavePolicy(
        [
          every.FixedIntervalPolicy(save_interval_steps),
          every.PreemptionCheckpointingPolicy(),
        ]
      ),
      create=not read_only,
      cleanup_tmp_directories=not read_only,  # of saves killed half-way
      enable_async_checkpointing=async_save,
      read_only=read_only,
    )
    self._manager = ocp.CheckpointManager(
      directory, options=options, handler_registry=_registry()
    )
    self.directory = self._manager.directory

  @property
  def all_steps(self) -> tuple[int, ...]:
    """The steps of all complete checkpoints, ascending."""
    return tuple(sorted(self._manager.all_steps()))

  @property
  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step; None if there is none."""
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, *, force: bool = False) -> bool:
    """Saves ``state`` at ``step`` if due or ``force``d; never overwrites.

    Returns:
      Whether it is written (False: not due, or ``step`` is already saved).

    Raises:
      NonFiniteStateError: a floating leaf holds NaN or Inf; nothing is
        written and the latest checkpoint stays the last good one.
    """
    if step in self._manager.all_steps():
      return False
    if not (force or self._manager.should_save(step)):
      return False
    bad = _non_finite_leaves(state)
    if bad:
      raise NonFiniteStateError(
        f"Refusing to save step {step}: state leaf {bad[0]} holds NaN or "
        f"Inf ({len(bad)} non-finite leaves: {', '.join(bad[:5])}). Nothing "
        f"was written; the checkpoints in {self.directory} are intact. "
        "Training diverged: resume from the latest checkpoint with a lower "
        "learning rate or stronger gradient clipping."
      )
    args = ocp.args.Composite(**{_STATE: ocp.args.PyTreeSave(state)})
    return self._manager.save(step, args=args, force=True)

  def restore(self, step: int, target: PyTree, *, partial: bool = False):
    """The checkpoint of ``step``, in the structure of ``target``.

    Args:
      step: one of `all_steps`.
      target: arrays or `jax.ShapeDtypeStruct`s: the structure, shapes,
        dtypes and shardings to restore into.
      partial: ``target`` is a dict of some top-level items of the saved
        state (e.g. ``params``, ``batch_stats``); only those are read.

    Raises:
      CheckpointRestoreError: the checkpoint is missing or unreadable, or its
        structure or shapes differ from ``target``'s.
    """
    self._manager.wait_until_finished()

    def read(abstract):
      args = ocp.args.Composite(**{_STATE: _restore_args(abstract)})
      return self._manager.restore(step, args=args)[_STATE]

    return _restore_state(
      self.directory / str(step),
      target,
      partial,
      lambda: self._manager.item_metadata(step)[_STATE].tree,
      read,
    )

  def restore_latest(self, target: PyTree, *, partial: bool = False):
    """`restore` of the newest checkpoint; None if there is none (fresh run).

    An older checkpoint is never used silently when the newest one fails.
    """
    self._manager.wait_until_finished()
    step = self.latest_step
    return None if step is None else self.restore(step, target, partial=partial)

  def close(self) -> None:
    """Waits for pending saves, then releases orbax's resources."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def restore_variables(directory: str, template_variables: PyTree) -> PyTree:
  """The model variables of the newest checkpoint, read without an optimizer.

  Args:
    directory: a checkpoint directory (`checkpoint_dir` of a run).
    template_variables: ``{"params": ..., "batch_stats": ...}`` of the model,
      as arrays or `jax.ShapeDtypeStruct`s (e.g. from ``jax.eval_shape``).

  Returns:
    Those items of the saved state, in the template's structure and dtypes.

  Raises:
    NoCheckpointError: ``directory`` is missing or holds no checkpoint.
    CheckpointRestoreError: the checkpoint is unreadable or does not match
      the template.
  """
  directory = epath.Path(directory)
  steps = ocp.path.step.checkpoint_steps(directory)  # complete ones only
  if not steps:
    raise NoCheckpointError(directory)
  step_dir = directory / str(max(steps))
  # A bare orbax Checkpointer reads the step: unlike a CheckpointManager it
  # owns no directory, so nothing is written, deleted or cleaned up beside a
  # live run (and orbax has no read-only warning to give).
  with ocp.Checkpointer(
    ocp.CompositeCheckpointHandler(handler_registry=_registry())
  ) as reader:
    return _restore_state(
      step_dir,
      template_variables,
      True,
      lambda: reader.metadata(step_dir).item_metadata[_STATE].tree,
      lambda abstract: reader.restore(
        step_dir,
        args=ocp.args.Composite(**{_STATE: _restore_args(abstract)}),
      )[_STATE],
    )


def restore_for_eval(
  config: ml_collections.ConfigDict, workdir: str
) -> tuple[nn.Module, PyTree]:
  """(model of ``config``, variables of the newest checkpoint in ``workdir``).

  Raises:
    NoCheckpointError, CheckpointRestoreError: see `restore_variables`.
  """
  model = build_model(config)
  input_shape = dataset_info(config.dataset.name).input_shape
  shapes = jax.eval_shape(
    functools.partial(model.init, train=False),
    jax.random.key(0),
    jnp.zeros((2, *input_shape)),
  )
  template = {
    "params": shapes["params"],
    "batch_stats": shapes.get("batch_stats", {}),
  }
  return model, restore_variables(checkpoint_dir(workdir), template)
