"""Batches sized to a memory budget, so that bounding never runs out of memory.

A bound stage's working memory grows with its batch (CROWN's identity passes
hold rows × batch × layer elements; α-CROWN also keeps Adam's state), and an
XLA executable that cannot allocate its buffers aborts the whole process
(``std::bad_alloc`` on a CPU) instead of raising. So before running a stage
the executable compiled for a batch is asked how much memory it needs —
XLA's buffer assignment, ``compiled.memory_analysis()``: arguments + outputs
+ temporaries − aliased bytes — and a batch over the budget is split into
chunks that fit. When XLA reports nothing, an analytic estimate stands in:
the bytes of every value of the function's jaxpr (sub-jaxprs once), an
upper bound of what a buffer assignment needs.

The budget defaults to a fraction of the memory available now: on a GPU
(or TPU) the device's ``bytes_limit − bytes_in_use`` from
``jax.devices()[0].memory_stats()``, on a CPU the kernel's ``MemAvailable``
(``/proc/meminfo``), else the free physical pages (``os.sysconf``), plus
the memory this process's allocator holds free for reuse
(`host_memory.free_heap_bytes`: after `host_memory.keep_freed_memory` the
process keeps its peak, which the kernel no longer counts as available).
"""

import math
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from cure_jax import host_memory

GIB = 2**30
# The share of the available memory a stage may use by default: the rest is
# left to the process's other buffers and to memory the runtime does not report.
DEFAULT_FRACTION = 0.5
# The process's peak grows by more than XLA's buffer assignment reports
# (runtime and convolution scratch space): 3.7 GiB for a reported 2.94 GiB
# (SmallCNN, CROWN, batch 10, CPU). Reported bytes are scaled by this.
RUNTIME_OVERHEAD = 1.5


class MemoryBudgetError(MemoryError):
  """Even one point of a computation needs more memory than the budget."""


def _meminfo_available() -> int | None:
  """MemAvailable of /proc/meminfo in bytes, or None if unreadable."""
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    return None
  return None


def _sysconf_available() -> int | None:
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def available_bytes(device: jax.Device | None = None) -> int:
  """Memory available to a computation on ``device`` (default: the first).

  Returns:
    Accelerator: ``bytes_limit − bytes_in_use`` of its memory statistics;
    CPU (or an accelerator without statistics): the host's available memory
    plus what this process's allocator holds free.

  Raises:
    RuntimeError: if no source reports the available memory.
  """
  device = device or jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  available = _meminfo_available() or _sysconf_available()
  if not available:
    raise RuntimeError(
      "cannot read the available memory (no device memory statistics, "
      "/proc/meminfo or os.sysconf); set the budget explicitly, e.g. "
      "--config.eval.memory_budget_gb=8."
    )
  return available + host_memory.free_heap_bytes()


def budget_bytes(budget_gb: float | None = None) -> int:
  """The budget in bytes: ``budget_gb`` GiB, or by default (None or 0)
  `DEFAULT_FRACTION` of `available_bytes`.

  Raises:
    ValueError: for a negative or non-finite ``budget_gb``.
  """
  if budget_gb is None or budget_gb == 0:
    return int(DEFAULT_FRACTION * available_bytes())
  if not math.isfinite(budget_gb) or budget_gb < 0:
    raise ValueError(
      f"memory budget must be a finite number of GiB >= 0 (0 = default), "
      f"got {budget_gb!r}."
    )
  return max(1, int(budget_gb * GIB))


def _aval_bytes(aval) -> int:
  shape = getattr(aval, "shape", None)
  dtype = getattr(aval, "dtype", None)
  if shape is None or dtype is None:
    return 0
  return math.prod(shape) * np.dtype(dtype).itemsize


def _jaxpr_bytes(jaxpr) -> int:
  """Bytes of every value a jaxpr defines, sub-jaxprs counted once."""
  total = sum(_aval_bytes(v.aval) for v in jaxpr.invars)
  for eqn in jaxpr.eqns:
    total += sum(_aval_bytes(v.aval) for v in eqn.outvars)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", None)
        if isinstance(sub, jax.extend.core.Jaxpr):
          total += _jaxpr_bytes(sub)
        elif isinstance(inner, jax.extend.core.Jaxpr):
          total += _jaxpr_bytes(inner)
  return total


def analytic_bytes(fn: Callable, *args) -> int:
  """Upper estimate of ``fn(*args)``'s memory: all its jaxpr's values."""
  return _jaxpr_bytes(jax.make_jaxpr(fn)(*args).jaxpr)


def compiled_bytes(compiled: Any) -> int | None:
  """Arguments + outputs + temporaries − aliases of an XLA executable, or
  None where XLA gives no memory analysis."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, AttributeError, RuntimeError):
    return None
  if stats is None:
    return None
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def describe_model(apply_fn: Callable) -> str:
  """A short name for error messages: the module class of a bound
  ``model.apply``, else the function's name."""
  owner = getattr(apply_fn, "__self__", None)
  if owner is not None:
    return type(owner).__name__
  return getattr(apply_fn, "__qualname__", repr(apply_fn))


def _format_gib(num_bytes: float) -> str:
  return f"{num_bytes / GIB:.3g} GiB"


def fit_batch(
  compile_at: Callable[[int], Any],
  size: int,
  budget: int,
  what: str,
  estimate_at: Callable[[int], int] | None = None,
  overhead: float = RUNTIME_OVERHEAD,
) -> tuple[int, Any]:
  """The largest chunk (up to ``size``) whose executable fits ``budget``.

  Compiles at ``size`` first (free when it fits: the run needs that
  executable anyway); over the budget, the chunk shrinks in proportion
  (memory grows about linearly with the batch), at least halving, until
  it fits.

  Args:
    compile_at: chunk size -> compiled executable (``jit(...).lower(...)
      .compile()``).
    size: the batch to run (>= 1).
    budget: bytes.
    what: names the computation (stage and model) in the error.
    estimate_at: chunk size -> bytes, used where XLA gives no memory
      analysis (default: assume it fits).
    overhead: factor applied to XLA's figure (`RUNTIME_OVERHEAD`).

  Returns:
    (chunk size, its executable).

  Raises:
    MemoryBudgetError: if one point does not fit.
  """
  chunk = size
  while True:
    compiled = compile_at(chunk)
    need = compiled_bytes(compiled)
    if need is None:
      need = estimate_at(chunk) if estimate_at is not None else 0
    else:
      need = math.ceil(overhead * need)
    if need <= budget:
      return chunk, compiled
    if chunk == 1:
      raise MemoryBudgetError(
        f"{what} needs {_format_gib(need)} for a single point, over the "
        f"memory budget of {_format_gib(budget)}. Raise the budget "
        f"(--config.eval.memory_budget_gb), free memory, or use a cheaper "
        f"bound method (e.g. alpha_crown_shared instead of alpha_crown, "
        f"or alpha_crown_ibp or crown_ibp instead of crown / alpha_crown)."
      )
    chunk = max(1, min(chunk // 2, math.floor(chunk * budget / need)))


def chunk_rows(rows: np.ndarray, chunk: int) -> list[tuple[np.ndarray, int]]:
  """``rows`` in chunks of exactly ``chunk`` (the last padded with its
  first row), each with its number of real rows."""
  chunks = []
  for start in range(0, len(rows), chunk):
    part = rows[start : start + chunk]
    used = len(part)
    if used < chunk:
      part = np.concatenate([part, np.full(chunk - used, part[0])])
    chunks.append((part, used))
  return chunks
