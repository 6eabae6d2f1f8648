"""Tests for cure_jax.train.schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.train.schedules import (
  kappa_schedule,
  multistep_lr_schedule,
  smoothed_eps_schedule,
  warmup_regularizer_scale,
)


def _auto_lirpa_smoothed(
  max_eps, start_epoch, length, epoch_length, mid=0.25, beta=4.0
):
  """ε of auto_LiRPA's SmoothedScheduler at every batch, in plain Python.

  Transcribes ``SmoothedScheduler.step_batch`` for ``"start=S,length=N"``:
  ``step`` is the 0-based global batch index, epochs are 1-based.
  """
  init_step = (start_epoch - 1) * epoch_length
  final_step = (start_epoch + length - 1) * epoch_length
  mid_step = int((final_step - init_step) * mid) + init_step
  t = (mid_step - init_step) ** (beta - 1.0)
  alpha = max_eps / (
    (final_step - mid_step) * beta * t + (mid_step - init_step) * t
  )
  mid_value = alpha * (mid_step - init_step) ** beta

  def eps(step):
    if step <= init_step:
      return 0.0
    if step < mid_step:
      return alpha * float(step - init_step) ** beta
    return min(
      mid_value
      + (max_eps - mid_value) * (step - mid_step) / (final_step - mid_step),
      max_eps,
    )

  return eps


def _values(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


def test_smoothed_hand_values():
  # a=0, b=8: m = 2, P = 2, L = 6, α = 1/(2³·(4·6 + 2)) = 1/208,
  # ε_m = 16/208 = 1/13, slope (1 − 1/13)/6 = 2/13.
  schedule = smoothed_eps_schedule(1.0, start_step=0, end_step=8)
  expected = [
    0,
    1 / 208,
    1 / 13,
    3 / 13,
    5 / 13,
    7 / 13,
    9 / 13,
    11 / 13,
    1,
    1,
    1,
  ]
  np.testing.assert_allclose(_values(schedule, range(11)), expected, rtol=1e-6)


def test_smoothed_matches_auto_lirpa():
  # start=2 (after one natural epoch), length=3, 10 batches per epoch: the
  # ramp has 30 steps and switches after ⌊30/4⌋ = 7 (not round(7.5) = 8).
  eps, epoch_length = 8 / 255, 10
  reference = _auto_lirpa_smoothed(eps, 2, 3, epoch_length)
  schedule = smoothed_eps_schedule(
    eps, start_step=1 * epoch_length, end_step=4 * epoch_length
  )
  steps = range(6 * epoch_length)
  np.testing.assert_allclose(
    _values(schedule, steps),
    [reference(s) for s in steps],
    rtol=1e-5,
    atol=1e-9,
  )


def test_smoothed_is_monotone_and_bounded():
  schedule = smoothed_eps_schedule(0.3, start_step=100, end_step=2300)
  values = np.asarray(schedule(jnp.arange(3000)))
  assert np.all(np.diff(values) >= -1e-7)
  np.testing.assert_array_equal(values[:101], 0.0)
  np.testing.assert_allclose(values[2300:], 0.3)


def test_smoothed_value_and_slope_are_continuous_at_the_switch():
  start, end, final = 100, 500, 0.5
  schedule = smoothed_eps_schedule(final, start, end)
  mid = start + 100  # ⌊400 · 0.25⌋
  slope = jax.grad(schedule)
  delta = 1e-2
  np.testing.assert_allclose(
    schedule(mid - delta), schedule(mid + delta), rtol=1e-3
  )
  np.testing.assert_allclose(slope(mid - delta), slope(mid + delta), rtol=1e-3)
  # Linear part: slope (F − ε_m)/L with ε_m = F P/(d L + P) = 0.5/13.
  np.testing.assert_allclose(
    slope(mid + 10.5), (final - final / 13) / 300, rtol=1e-5
  )
  # Smooth start: zero value and zero slope on both sides of a.
  np.testing.assert_allclose(slope(start + delta), 0.0, atol=1e-7)
  assert float(slope(start - delta)) == 0.0


def test_smoothed_degenerate_ramps():
  instant = smoothed_eps_schedule(1.0, start_step=5, end_step=5)
  np.testing.assert_array_equal(
    _values(instant, range(8)), [0, 0, 0, 0, 0, 1, 1, 1]
  )
  linear = smoothed_eps_schedule(1.0, 0, 4, mid_fraction=0.0)
  np.testing.assert_allclose(
    _values(linear, range(6)), [0, 0.25, 0.5, 0.75, 1, 1]
  )
  polynomial = smoothed_eps_schedule(1.0, 0, 4, mid_fraction=1.0, degree=2)
  np.testing.assert_allclose(
    _values(polynomial, range(6)), [0, 1 / 16, 4 / 16, 9 / 16, 1, 1]
  )


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(start_step=5, end_step=4), "end_step"),
    (dict(start_step=-1, end_step=4), "start_step"),
    (dict(start_step=1.5, end_step=4), "start_step"),
    (dict(start_step=0, end_step=4, mid_fraction=1.5), "mid_fraction"),
    (dict(start_step=0, end_step=4, degree=0.5), "degree"),
    (dict(start_step=0, end_step=4, final_eps=-0.1), "final_eps"),
  ],
)
def test_smoothed_rejects_bad_arguments(kwargs, match):
  kwargs.setdefault("final_eps", 0.1)
  with pytest.raises(ValueError, match=match):
    smoothed_eps_schedule(**kwargs)


def test_kappa_is_one_during_natural_steps_only():
  np.testing.assert_array_equal(
    _values(kappa_schedule(3), range(6)), [1, 1, 1, 0, 0, 0]
  )
  np.testing.assert_array_equal(_values(kappa_schedule(0), range(3)), 0)
  with pytest.raises(ValueError, match="natural_steps"):
    kappa_schedule(-1)


def test_multistep_lr_hand_values():
  schedule = multistep_lr_schedule(5e-4, [10, 20], decay=0.2)
  np.testing.assert_allclose(
    _values(schedule, [0, 9, 10, 19, 20, 1000]),
    [5e-4, 5e-4, 1e-4, 1e-4, 2e-5, 2e-5],
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    _values(multistep_lr_schedule(0.1, []), [0, 99]), 0.1
  )


@pytest.mark.parametrize(
  "base_lr, milestones, decay, match",
  [
    (1e-3, [20, 10], 0.2, "strictly increasing"),
    (1e-3, [10, 10], 0.2, "strictly increasing"),
    (1e-3, [0, 10], 0.2, "strictly increasing"),
    (1e-3, [10], 0.0, "decay"),
    (0.0, [10], 0.2, "base_lr"),
  ],
)
def test_multistep_lr_rejects_bad_arguments(base_lr, milestones, decay, match):
  with pytest.raises(ValueError, match=match):
    multistep_lr_schedule(base_lr, milestones, decay)


def test_warmup_regularizer_scale():
  eps = jnp.array([0.0, 0.25, 0.5, 1.0, 2.0])
  np.testing.assert_allclose(
    warmup_regularizer_scale(eps, 1.0), [0.5, 0.375, 0.25, 0.0, 0.0]
  )
  np.testing.assert_allclose(
    warmup_regularizer_scale(0.1, 0.4, weight=1.0), 0.75
  )
  with pytest.raises(ValueError, match="eps_end"):
    warmup_regularizer_scale(0.1, 0.0)


@pytest.mark.parametrize(
  "schedule",
  [
    smoothed_eps_schedule(2 / 255, 390, 390 * 81),
    smoothed_eps_schedule(1.0, 3, 3),
    kappa_schedule(390),
    multistep_lr_schedule(5e-4, [390 * 120, 390 * 140]),
    lambda eps: warmup_regularizer_scale(eps, 0.3),
  ],
)
def test_jit_equals_eager_for_int32_steps(schedule):
  steps = jnp.array(
    [0, 1, 389, 390, 391, 5000, 390 * 81, 390 * 130, 10**6], dtype=jnp.int32
  )
  eager = np.array([float(schedule(s)) for s in steps])
  np.testing.assert_allclose(jax.jit(schedule)(steps), eager, rtol=1e-6)
