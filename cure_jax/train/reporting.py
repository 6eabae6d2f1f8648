"""Metrics as absl log lines and TensorBoard summaries; atomic JSON files.

Only process 0 writes (`is_main_process`); other processes get a writer that
does nothing, so the loop calls it unconditionally. The progress bar with
ETA is `cure_jax.train.progress`.
"""

import json
import os
from collections.abc import Mapping

from absl import logging


class MetricWriter:
  """Scalars to the log (INFO) and to TensorBoard event files under ``logdir``."""

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
    logging.info("[step %d] %s", step, line)
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, float(value), step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _fmt(value) -> str:
  value = float(value)
  return f"{value:.4g}"


def write_json_atomic(path: str, payload: dict) -> None:
  """Writes JSON to ``path`` via a temporary file and a rename."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
