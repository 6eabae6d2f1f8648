"""Preemption safety: turn termination signals into a clean stop at a step.

Cluster schedulers announce preemption with a signal (SIGTERM on most, often
SIGUSR1 via e.g. SLURM's ``--signal``) some time before killing the job.
`PreemptionGuard` catches those signals, so that instead of dying mid-step the
training loop checkpoints at the next step boundary and exits cleanly::

  with PreemptionGuard() as guard:
    while step < num_steps and not guard.should_stop(step):
      state = train_step(state, next(batches))
      step += 1
      ckpt.save(step, state)  # Periodic.
    ckpt.save(step, state, force=True)  # Final or preemption save.

Multi-host agreement. Every process must stop at the *same* step, or the
collectives of the next step deadlock. Two mechanisms provide it:

* When `jax.distributed` is initialised with its preemption service (the
  default), JAX's own notifier receives SIGTERM and
  `jax.experimental.multihost_utils.reached_preemption_sync_point(step)`
  returns True on all processes at one agreed step. The guard then leaves
  SIGTERM to JAX (a Python handler would replace JAX's C handler) and polls
  that sync point.
* Signals the guard handles itself are agreed on with a tiny all-gather of the
  per-process flags every `sync_every_steps` steps.

On a single process the local flag is the decision (no collective). A second
delivery of a handled signal is passed to the previous handler, so pressing
Ctrl-C twice (with SIGINT handled) still interrupts at once.
"""

import os
import signal
import threading
import types
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

_UNCATCHABLE = frozenset(
  getattr(signal, name)
  for name in ("SIGKILL", "SIGSTOP")
  if hasattr(signal, name)
)


def jax_preemption_service_active() -> bool:
  """Whether JAX's multi-host preemption sync service is running.

  It runs when `jax.distributed.initialize` was called with the
  `jax_enable_preemption_service` option on (the default); it then owns
  SIGTERM.
  """
  return jax.distributed.is_initialized() and bool(
    jax.config.jax_enable_preemption_service
  )


def _reached_jax_sync_point(step: int) -> bool:
  try:
    return multihost_utils.reached_preemption_sync_point(step)
  except RuntimeError:  # The service is disabled: no preemption notices.
    return False


class PreemptionGuard:
  """Context manager that converts termination signals into a stop request.

  Installs handlers for `signals` on entry and restores the previous handlers
  on exit. It must be entered from the main thread (the only thread in which
  Python runs signal handlers).
  """

  def __init__(
    self,
    signals: Sequence[int] = (signal.SIGTERM,),
    *,
    sync_every_steps: int = 1,
  ):
    """Configures the guard (nothing is installed before `__enter__`).

    Args:
      signals: the signals that request a stop, e.g.
        `(signal.SIGTERM, signal.SIGINT)` to also stop cleanly on Ctrl-C.
      sync_every_steps: in multi-process runs, how often (in steps) the
        processes all-gather their local flags; a stop is then decided at the
        first multiple of it at or after the signal. Irrelevant on one
        process.
    """
    self._signals = tuple(_as_signal(s) for s in signals)
    if not self._signals:
      raise ValueError("signals must name at least one signal to handle.")
    if sync_every_steps < 1:
      raise ValueError(
        f"sync_every_steps must be >= 1, got {sync_every_steps}."
      )
    self._sync_every_steps = sync_every_steps
    self._previous_handlers: dict[signal.Signals, Any] = {}
    self._signal_received: signal.Signals | None = None
    self._stop_requested = False
    self._use_jax_service = False

  @property
  def signal_received(self) -> signal.Signals | None:
    """The first handled signal this process received, if any."""
    return self._signal_received

  @property
  def stop_requested(self) -> bool:
    """Whether `should_stop` has decided to stop (it then stays True)."""
    return self._stop_requested

  @property
  def handled_signals(self) -> tuple[signal.Signals, ...]:
    """The signals with a Python handler installed by this guard."""
    return tuple(self._previous_handlers)

  def should_stop(self, step: int) -> bool:
    """Whether all processes should checkpoint at `step` and stop.

    In multi-process runs every process must call this at every step, with
    the same `step` (it may run a collective), and they all get the same
    answer.

    Args:
      step: the current training step (after the update).

    Returns:
      True from the agreed stop step on.
    """
    if self._stop_requested:
      return True
    if self._use_jax_service and _reached_jax_sync_point(step):
      logging.warning("JAX preemption sync point reached at step %d.", step)
      self._stop_requested = True
    elif self._previous_handlers:
      self._stop_requested = self._agree_on_local_signals(step)
    return self._stop_requested

  def _agree_on_local_signals(self, step: int) -> bool:
    local = self._signal_received is not None
    if jax.process_count() == 1:
      return local
    if step % self._sync_every_steps:
      return False
    flags = multihost_utils.process_allgather(np.int32(local))
    if flags.any():
      logging.warning(
        "Processes %s received a stop signal; stopping all at step %d.",
        np.flatnonzero(flags).tolist(),
        step,
      )
    return bool(flags.any())

  def __enter__(self) -> "PreemptionGuard":
    if self._previous_handlers:
      raise RuntimeError("This PreemptionGuard is already active.")
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError(
        "PreemptionGuard must be entered from the main thread: Python only "
        "runs signal handlers there."
      )
    self._signal_received = None
    self._stop_requested = False
    self._use_jax_service = jax_preemption_service_active()
    for sig in self._signals:
      if sig == signal.SIGTERM and self._use_jax_service:
        logging.info("SIGTERM is left to the JAX preemption service.")
        continue
      previous = signal.getsignal(sig)
      if previous is None:
        self._restore_handlers()
        raise RuntimeError(
          f"{sig.name} already has a handler installed outside Python, "
          "which PreemptionGuard could not restore afterwards; leave it out "
          "of `signals`."
        )
      self._previous_handlers[sig] = previous
      signal.signal(sig, self._on_signal)
    return self

  def __exit__(
    self,
    exc_type: type[BaseException] | None,
    exc_value: BaseException | None,
    traceback: types.TracebackType | None,
  ) -> None:
    self._restore_handlers()

  def _restore_handlers(self) -> None:
    for sig, previous in self._previous_handlers.items():
      signal.signal(sig, previous)
    self._previous_handlers.clear()

  def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
    """Records the first signal; forwards repeats to the previous handler."""
    sig = signal.Signals(signum)
    if self._signal_received is None:
      self._signal_received = sig
      logging.warning(
        "Received %s: will checkpoint and stop at the next step "
        "boundary (send it again to stop at once).",
        sig.name,
      )
      return
    previous = self._previous_handlers.get(sig, signal.SIG_DFL)
    logging.warning("Received %s again: passing it on.", sig.name)
    if callable(previous):
      previous(signum, frame)
    elif previous != signal.SIG_IGN:  # SIG_DFL: die by the signal.
      signal.signal(sig, signal.SIG_DFL)
      os.kill(os.getpid(), sig)


def _as_signal(sig: int) -> signal.Signals:
  try:
    sig = signal.Signals(sig)
  except ValueError:
    raise ValueError(f"{sig!r} is not a signal number.") from None
  if sig in _UNCATCHABLE:
    raise ValueError(f"{sig.name} cannot be caught; choose e.g. SIGTERM.")
  return sig
