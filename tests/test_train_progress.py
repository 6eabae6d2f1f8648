"""Tests for cure_jax/train/progress.py."""

import io

import pytest

from cure_jax.train.progress import PhaseProgress, PhaseSpan, remaining_seconds

SPANS = [
  PhaseSpan("natural", 0, 10),
  PhaseSpan("ramp", 10, 30),
  PhaseSpan("robust", 30, 100),
]


def test_remaining_time_prices_each_phase_at_its_own_rate():
  rates = {"natural": 1.0, "ramp": 5.0}
  # At step 20: 10 ramp steps at 5 s, 70 robust steps priced like the ramp.
  assert remaining_seconds(SPANS, 20, rates, {}) == pytest.approx(50 + 350)


def test_unseen_phase_is_priced_by_the_cost_hint():
  hint = {"natural": 1.0, "ramp": 8.0, "robust": 8.0}
  got = remaining_seconds(SPANS, 4, {"natural": 0.5}, hint)
  assert got == pytest.approx(6 * 0.5 + 20 * 4.0 + 70 * 4.0)


def test_no_rate_measured_gives_nan():
  assert remaining_seconds(SPANS, 0, {}, {}) != remaining_seconds(
    SPANS, 0, {}, {}
  )


def test_bar_attributes_steps_to_the_phase_they_ran_in():
  bar = PhaseProgress(SPANS, first_step=0, stream=io.StringIO())
  bar.update(10)
  bar.update(12)
  rates = bar.seconds_per_step()
  assert set(rates) == {"natural", "ramp"}
  assert bar.phase_of(12) == "ramp" and bar.phase_of(100) == "robust"
  assert "ETA" in bar.update(13)
  bar.close()
