"""Compile-then-run timing of jitted functions, for per-point cost reports.

A certification report quotes the seconds each stage costs per test point.
The first call of a jitted function at a new shape also compiles it, which
would inflate that figure by seconds to minutes, so the two are measured
apart: ``jitted.lower(...).compile()`` (cached by JAX after the first time,
then well under a millisecond) and the call of the compiled executable,
waited on with `jax.block_until_ready`. Tracing happens under
`certification_precision()` (float32 matmuls and convolutions at full
precision), the setting every certification function is compiled with.
"""

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from cure_jax.parallel.precision import certification_precision


class Timed(NamedTuple):
  """A result with the time it took.

  Attributes:
    value: what the function returned (device arrays, ready).
    compile_seconds: lowering and compiling (≈ 0 when already cached).
    run_seconds: running the compiled executable until its outputs are ready.
  """

  value: Any
  compile_seconds: float
  run_seconds: float


def compile_and_run(
  jitted: Callable, static_args: Sequence[Any], dynamic_args: Sequence[Any]
) -> Timed:
  """Calls ``jitted(*static_args, *dynamic_args)``, timing compile and run.

  Args:
    jitted: a `jax.jit` function whose leading positional arguments are
      static (``static_argnums=range(len(static_args))``).
    static_args: the static arguments (hashable).
    dynamic_args: the array arguments (concrete, not traced).

  Returns:
    `Timed` with the outputs and the two durations.
  """
  with certification_precision():
    start = time.perf_counter()
    compiled = jitted.lower(*static_args, *dynamic_args).compile()
    compiled_at = time.perf_counter()
    value = jax.block_until_ready(compiled(*dynamic_args))
  return Timed(value, compiled_at - start, time.perf_counter() - compiled_at)


def is_traced(*trees: Any) -> bool:
  """Whether any leaf of ``trees`` is a tracer (we are inside jit/vmap/grad)."""
  return any(
    isinstance(leaf, jax.core.Tracer)
    for leaf in jax.tree_util.tree_leaves(trees)
  )
