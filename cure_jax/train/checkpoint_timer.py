"""Checkpoints by wall time, besides every ``checkpoint_every_steps`` steps.

A slow step (CNN7 on a CPU, a large batch) can make the step interval hours
long; ``config.checkpoint_every_minutes`` bounds the work a crash loses in
time instead. All processes must save at the same step, so process 0's clock
decides and the decision is broadcast to the others.
"""

import time

import jax
import numpy as np
from jax.experimental import multihost_utils


def _now() -> float:
  """Seconds on a monotonic clock (a function, so tests can move it)."""
  return time.monotonic()


class CheckpointTimer:
  """Says when ``minutes`` of wall time have passed since the last save.

  Args:
    minutes: the interval; 0 (or less) turns time-based saves off.

  Every process must call `due` at the same steps (it may broadcast).
  """

  def __init__(self, minutes: float):
    self._seconds = 60.0 * minutes
    self._last = _now()

  @property
  def enabled(self) -> bool:
    return self._seconds > 0

  def due(self) -> bool:
    """Whether the interval has passed, as process 0 sees it."""
    if not self.enabled:
      return False
    due = _now() - self._last >= self._seconds
    if jax.process_count() > 1:
      due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due

  def restart(self) -> None:
    """Starts the interval again (after any save)."""
    self._last = _now()
