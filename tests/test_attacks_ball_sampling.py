"""Tests for cure_jax/attacks/ball_sampling.py."""

import math

import jax
import numpy as np
import pytest

from cure_jax.attacks import ball_sampling, norms

TOL = 1e-6


def _key(seed):
  # RBG keys compile several times faster than threefry on CPU; the attacks
  # take any key implementation (test_attacks_sabr.py uses the default).
  return jax.random.key(seed, impl="rbg")


def _norm(delta, norm):
  """Per-example l_p norm in float64 (independent of the library)."""
  flat = np.asarray(delta, np.float64).reshape(len(delta), -1)
  return {
    "linf": np.abs(flat).max(1),
    "l2": np.sqrt((flat**2).sum(1)),
    "l1": np.abs(flat).sum(1),
  }[norm]


random_start = jax.jit(
  ball_sampling.random_start, static_argnames=("norm", "domain")
)
sample = jax.jit(
  ball_sampling.sample_ball_perturbation, static_argnames=("norm",)
)


@pytest.mark.parametrize("norm", norms.NORMS)
@pytest.mark.parametrize("domain", [(0.0, 1.0), None])
def test_random_start_lies_in_ball_and_domain(norm, domain):
  x = np.random.default_rng(0).uniform(size=(64, 2, 3, 3)).astype(np.float32)
  eps = np.linspace(0.0, 1.5, 64).astype(np.float32)
  start = random_start(_key(1), x, eps, norm=norm, domain=domain)
  assert np.all(_norm(start - x, norm) <= eps + TOL)
  if domain is not None:
    assert start.min() >= 0.0 and start.max() <= 1.0
  np.testing.assert_array_equal(start[0], x[0])  # eps = 0.


def test_linf_start_is_uniform_in_the_clipped_box():
  # x = 0.05, eps = 0.1: the box B∞ ∩ [0, 1] is [0, 0.15], sampled uniformly.
  x = np.full((20000, 1), 0.05, np.float32)
  start = np.asarray(
    random_start(_key(2), x, 0.1, norm="linf", domain=(0.0, 1.0))
  )
  assert start.min() >= 0.0 and start.max() <= 0.15 + TOL
  assert abs(np.mean(start < 0.05) - 1 / 3) < 0.02  # No mass piled at 0.
  assert abs(start.mean() - 0.075) < 0.002


def _fraction_with_small_first_coordinate(norm):
  delta = np.asarray(
    sample(_key(3), np.zeros((40000, 2), np.float32), 1.0, norm=norm)
  )
  inside_half = np.mean(_norm(delta, norm) <= 0.5)
  return inside_half, np.mean(np.abs(delta[:, 0]) <= 0.5)


def test_l2_perturbation_is_uniform_in_the_disk():
  inside_half, strip = _fraction_with_small_first_coordinate("l2")
  assert abs(inside_half - 0.25) < 0.01  # Area ratio (1/2)^2.
  # Area of {|t_1| <= 1/2} in the unit disk over π: 1/3 + √3/(2π).
  assert abs(strip - (1 / 3 + math.sqrt(3) / (2 * math.pi))) < 0.01


def test_l1_perturbation_is_uniform_in_the_diamond():
  inside_half, strip = _fraction_with_small_first_coordinate("l1")
  assert abs(inside_half - 0.25) < 0.01
  # Area of {|t_1| <= 1/2} in the unit diamond (area 2): 1 − (1/2)^2.
  assert abs(strip - 0.75) < 0.01


def test_high_dimensional_samples_concentrate_near_the_sphere():
  # Uniform in a D-ball: P(||δ|| <= r·eps) = r^D, tiny for D = 300.
  for norm in ("l2", "l1"):
    delta = sample(_key(4), np.zeros((500, 300), np.float32), 2.0, norm=norm)
    assert np.all(_norm(delta, norm) > 2.0 * 0.95)


def test_bad_arguments_raise_clear_errors():
  x = np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match="Unknown norm 'l_inf'"):
    ball_sampling.random_start(_key(0), x, 0.1, norm="l_inf")
  with pytest.raises(ValueError, match="eps must be non-negative"):
    ball_sampling.random_start(_key(0), x, -0.1, norm="l2")
