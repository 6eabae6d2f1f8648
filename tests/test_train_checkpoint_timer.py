"""Tests for cure_jax/train/checkpoint_timer.py."""

import numpy as np

from cure_jax.train import checkpoint_timer
from cure_jax.train.checkpoint_timer import CheckpointTimer


def _clock(monkeypatch, start=0.0):
  now = {"t": start}
  monkeypatch.setattr(checkpoint_timer, "_now", lambda: now["t"])
  return now


def test_due_once_the_minutes_have_passed_since_the_last_save(monkeypatch):
  now = _clock(monkeypatch, 100.0)
  timer = CheckpointTimer(2)
  now["t"] = 100.0 + 119.0
  assert not timer.due()
  now["t"] = 100.0 + 120.0
  assert timer.due() and timer.due()  # stays due until a save
  timer.restart()
  assert not timer.due()
  now["t"] += 120.0
  assert timer.due()


def test_zero_minutes_is_off(monkeypatch):
  now = _clock(monkeypatch)
  timer = CheckpointTimer(0)
  now["t"] = 1e9
  assert not timer.enabled and not timer.due()


def test_process_zeros_decision_is_broadcast(monkeypatch):
  """With several processes the answer is process 0's, whatever the local
  clock says."""
  now = _clock(monkeypatch)
  sent = []

  def broadcast(value):
    sent.append(int(value))
    return np.int32(1)  # process 0 says: due

  monkeypatch.setattr(checkpoint_timer.jax, "process_count", lambda: 2)
  monkeypatch.setattr(
    checkpoint_timer.multihost_utils, "broadcast_one_to_all", broadcast
  )
  timer = CheckpointTimer(5)
  now["t"] = 1.0  # locally not due
  assert timer.due()
  assert sent == [0]
