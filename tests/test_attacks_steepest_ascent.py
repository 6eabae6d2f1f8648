"""Tests for cure_jax/attacks/steepest_ascent.py."""

import jax
import numpy as np
import pytest

from cure_jax.attacks import norms, steepest_ascent


def _norm(delta, norm):
  """Per-example l_p norm in float64 (independent of the library)."""
  flat = np.asarray(delta, np.float64).reshape(len(delta), -1)
  return {
    "linf": np.abs(flat).max(1),
    "l2": np.sqrt((flat**2).sum(1)),
    "l1": np.abs(flat).sum(1),
  }[norm]


direction = jax.jit(
  steepest_ascent.ascent_direction,
  static_argnames=("norm", "domain", "l1_sparsity"),
)


def test_directions_attain_the_dual_norm():
  # max_{||d||_p <= 1} g·d = ||g||_q: the steepest direction attains it.
  g = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
  inside = np.full_like(g, 0.5)  # Away from the domain boundary.
  dual = {"linf": "l1", "l2": "l2", "l1": "linf"}
  for norm in norms.NORMS:
    d = direction(g, inside, norm=norm, l1_sparsity=0.99)
    np.testing.assert_allclose(_norm(d, norm), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
      np.sum(g * np.asarray(d), axis=(1, 2)), _norm(g, dual[norm]), rtol=1e-5
    )


def test_l1_direction_moves_the_top_k_coordinates():
  g = np.array(
    [[0.1, -3.0, 2.0, 0.5, -1.0, 0.0, 0.2, 0.3, 0.4, 0.05]], np.float32
  )
  x = np.full_like(g, 0.5)
  # round((1 − 0.8)·10) = 2 coordinates, each moved by sign(g_i) / 2.
  np.testing.assert_allclose(
    direction(g, x, norm="l1", l1_sparsity=0.8),
    [[0, -0.5, 0.5, 0, 0, 0, 0, 0, 0, 0]],
  )
  assert steepest_ascent.l1_num_coordinates(784, 0.99) == 8
  assert steepest_ascent.l1_num_coordinates(10, 0.99) == 1


def test_l1_direction_skips_coordinates_stuck_on_the_domain_boundary():
  g = np.array([[-3.0, 2.0, 1.0]], np.float32)
  # Coordinate 0 sits at 0 with g < 0 and coordinate 1 at 1 with g > 0: the
  # clip would undo any move, so the step goes to coordinate 2.
  x = np.array([[0.0, 1.0, 0.5]], np.float32)
  np.testing.assert_array_equal(
    direction(g, x, norm="l1", l1_sparsity=0.8), [[0.0, 0.0, 1.0]]
  )
  # Without a domain the largest |g| wins.
  np.testing.assert_array_equal(
    direction(g, x, norm="l1", domain=None, l1_sparsity=0.8), [[-1.0, 0.0, 0.0]]
  )
  # Pointing back into the domain is allowed.
  np.testing.assert_array_equal(
    direction(-g, x, norm="l1", l1_sparsity=0.8), [[1.0, 0.0, 0.0]]
  )


def test_zero_gradient_gives_zero_direction():
  g = np.zeros((2, 6), np.float32)
  for norm in norms.NORMS:
    np.testing.assert_array_equal(direction(g, g + 0.5, norm=norm), 0.0)


def test_hand_values():
  g = np.array([[3.0, -4.0]], np.float32)
  np.testing.assert_array_equal(direction(g, g * 0, norm="linf"), [[1, -1]])
  np.testing.assert_allclose(direction(g, g * 0, norm="l2"), [[0.6, -0.8]])


def test_bad_arguments_raise_clear_errors():
  g = np.ones((2, 3), np.float32)
  with pytest.raises(ValueError, match="Unknown norm 'l0'"):
    steepest_ascent.ascent_direction(g, g, norm="l0")
  with pytest.raises(ValueError, match=r"sparsity must lie in \[0, 1\)"):
    steepest_ascent.ascent_direction(g, g, norm="l1", l1_sparsity=1.0)
