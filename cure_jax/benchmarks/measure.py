"""Timing helpers: median wall time of a jitted function after warm-up."""

import time
from collections.abc import Callable

import jax
import numpy as np


def median_seconds(
  fn: Callable, *args, repeats: int = 10, warmup: int = 2
) -> float:
  """Median seconds of ``fn(*args)`` (results blocked on), after compiling."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def paired_ratio(
  fn: Callable,
  fn_args: tuple,
  base: Callable,
  base_args: tuple,
  repeats: int = 10,
  warmup: int = 2,
):
  """(median s of fn, median s of base, median of the per-pair ratios).

  The two are timed alternately, so a shared or throttled machine slows both
  members of a pair alike: the median ratio is far steadier than a ratio of
  two medians taken minutes apart.
  """
  for _ in range(warmup):
    jax.block_until_ready(fn(*fn_args))
    jax.block_until_ready(base(*base_args))
  pairs = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(base(*base_args))
    middle = time.perf_counter()
    jax.block_until_ready(fn(*fn_args))
    pairs.append((time.perf_counter() - middle, middle - start))
  fn_s, base_s = np.median(np.asarray(pairs), axis=0)
  ratio = np.median([f / b for f, b in pairs])
  return float(fn_s), float(base_s), float(ratio)
