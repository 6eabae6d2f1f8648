"""Metrics on stdout and as TensorBoard summaries, and a progress line with ETA.

Only process 0 writes (`is_main_process`); other processes get a writer that
does nothing, so the loop calls it unconditionally.
"""

import json
import os
import sys
import time
from collections.abc import Mapping

import numpy as np


class MetricWriter:
  """Scalars to stdout and to TensorBoard event files under ``logdir``."""

  def __init__(self, logdir: str | None, enabled: bool = True):
    self._enabled = enabled
    self._tb = None
    if enabled and logdir:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self._tb = SummaryWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    line = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(scalars.items()))
    print(f"[step {step}] {line}", flush=True)
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, float(value), step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _fmt(value) -> str:
  value = float(value)
  return f"{value:.4g}"


class Progress:
  """A one-line progress report: step, percentage, speed and ETA."""

  def __init__(
    self,
    total_steps: int,
    first_step: int,
    enabled: bool = True,
    stream=sys.stderr,
  ):
    self._total = total_steps
    self._first = first_step
    self._start = time.monotonic()
    self._enabled = enabled
    self._stream = stream

  def update(self, step: int) -> str:
    done = step - self._first
    elapsed = time.monotonic() - self._start
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self._total - step) / rate if rate > 0 else float("nan")
    line = (
      f"{step}/{self._total} [{100 * step / max(self._total, 1):5.1f}%] "
      f"{rate:6.2f} steps/s  elapsed {_duration(elapsed)}  "
      f"ETA {_duration(eta)}"
    )
    if self._enabled:
      print(line, file=self._stream, flush=True)
    return line


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def write_json_atomic(path: str, payload: dict) -> None:
  """Writes JSON to ``path`` via a temporary file and a rename."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
