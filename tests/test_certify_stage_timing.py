"""Tests for cure_jax/certify/timing.py."""

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.certify import stage_timing
from cure_jax.parallel.precision import certification_precision

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _scaled_sum(power, x, scale):
  return scale * jnp.sum(x**power)


_scaled_sum_jit = jax.jit(_scaled_sum, static_argnums=0)


def _count_compilations(events):
  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == BACKEND_COMPILE_EVENT:
      events.append(event)

  return listener


def test_compile_and_run_returns_the_value_and_compiles_once():
  x = jnp.arange(4.0)
  y = x + 1
  compilations = []
  listener = _count_compilations(compilations)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    first = stage_timing.compile_and_run(_scaled_sum_jit, (2,), (x, 3.0))
    again = stage_timing.compile_and_run(_scaled_sum_jit, (2,), (y, 1.0))
    with certification_precision():  # Part of the cache key.
      plain = _scaled_sum_jit(2, x, 3.0)  # Shares the executable.
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert float(first.value) == 3.0 * (0 + 1 + 4 + 9)
  assert float(again.value) == 1 + 4 + 9 + 16
  np.testing.assert_allclose(plain, first.value)
  assert len(compilations) == 1
  assert (
    min(
      first.compile_seconds,
      first.run_seconds,
      again.compile_seconds,
      again.run_seconds,
    )
    >= 0
  )


def test_is_traced_inside_transformations_only():
  x = jnp.ones(3)
  assert not stage_timing.is_traced(x, {"a": np.ones(2)}, 1.0)
  seen = []
  jax.jit(lambda y: seen.append(stage_timing.is_traced(1.0, {"y": y})) or y)(x)
  jax.grad(lambda y: seen.append(stage_timing.is_traced(y)) or jnp.sum(y))(x)
  assert seen == [True, True]
