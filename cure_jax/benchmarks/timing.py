"""Timing helpers: median wall time of a jitted function after warm-up."""

import time
from typing import Callable

import jax
import numpy as np


def median_seconds(fn: Callable, *args, repeats: int = 10, warmup: int = 2) -> float:
  """Median seconds of ``fn(*args)`` (results blocked on), after compiling."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))
