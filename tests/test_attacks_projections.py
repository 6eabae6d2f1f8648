"""Tests for cure_jax/attacks/projections.py."""

import jax
import numpy as np
import optax
import pytest

from cure_jax.attacks import norms, projections

TOL = 1e-6
DOMAIN = (0.0, 1.0)

# Jitted once per shape: eager dispatch would compile every op separately.
project = jax.jit(projections.project, static_argnames=("norm", "domain"))
project_onto_l1_ball = jax.jit(projections.project_onto_l1_ball)


def _l1_projection_by_bisection(v: np.ndarray, radius: float) -> np.ndarray:
  """Independent float64 reference: KKT says w = sign(v)·max(|v| − θ, 0)
  with θ >= 0 the root of Σ max(|v_i| − θ, 0) = radius (or θ = 0 inside)."""
  v = np.asarray(v, np.float64)
  if np.abs(v).sum() <= radius:
    return v
  lo, hi = 0.0, np.abs(v).max()
  for _ in range(200):
    theta = 0.5 * (lo + hi)
    if np.maximum(np.abs(v) - theta, 0).sum() > radius:
      lo = theta
    else:
      hi = theta
  return np.sign(v) * np.maximum(np.abs(v) - 0.5 * (lo + hi), 0)


def test_l1_ball_projection_hand_cases():
  # μ = (3, 1): ρ = 1, θ = 3 − 2 = 1.
  np.testing.assert_allclose(
    project_onto_l1_ball(np.array([3.0, 1.0]), 2.0), [2.0, 0.0]
  )
  # μ = (2, 1.5, 1), partial sums (2, 3.5, 4.5): ρ = 3, θ = 2.5 / 3.
  np.testing.assert_allclose(
    project_onto_l1_ball(np.array([2.0, 1.5, -1.0]), 2.0),
    [2 - 2.5 / 3, 1.5 - 2.5 / 3, -(1 - 2.5 / 3)],
    rtol=1e-6,
  )
  # Inside the ball: unchanged, bit for bit.
  inside = np.array([0.25, -0.5, 0.125], np.float32)
  np.testing.assert_array_equal(project_onto_l1_ball(inside, 1.0), inside)
  # Radius zero gives zero (optax's version divides by the radius).
  np.testing.assert_array_equal(
    project_onto_l1_ball(np.array([1.0, -2.0]), 0.0), [0, 0]
  )


@pytest.mark.parametrize("dim", [1, 2, 3, 5, 8])
def test_l1_ball_projection_matches_bisection_and_optimality(dim):
  rng = np.random.default_rng(dim)
  for _ in range(20):
    v = rng.normal(size=dim) * rng.choice([0.1, 1.0, 5.0])
    radius = float(rng.uniform(0.0, 3.0))
    w = np.asarray(
      project_onto_l1_ball(v.astype(np.float32), radius), np.float64
    )
    np.testing.assert_allclose(
      w, _l1_projection_by_bisection(v, radius), atol=1e-5
    )
    assert np.abs(w).sum() <= radius + TOL
    # Exact optimality certificate: (v − w)·(u − w) <= 0 for every feasible u;
    # the inequality is linear in u, so checking the ball's 2·dim vertices
    # ±radius·e_i suffices.
    vertices = radius * np.concatenate([np.eye(dim), -np.eye(dim)])
    assert np.all((vertices - w) @ (v - w) <= 1e-5)


def test_l1_ball_projection_agrees_with_optax_and_is_idempotent():
  v = np.random.default_rng(0).normal(size=50).astype(np.float32) * 0.3
  w = project_onto_l1_ball(v, 1.5)
  np.testing.assert_allclose(
    w, optax.projections.projection_l1_ball(v, 1.5), atol=1e-6
  )
  np.testing.assert_allclose(project_onto_l1_ball(w, 1.5), w, atol=1e-7)


def _random_batch(seed, shape=(6, 3, 4, 2)):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=shape).astype(np.float32)
  far = x + 3.0 * rng.normal(size=shape).astype(np.float32)  # Far outside.
  return x, far


def _norm(delta, norm):
  """Per-example l_p norm in float64 (independent of the library)."""
  flat = np.asarray(delta, np.float64).reshape(len(delta), -1)
  return {
    "linf": np.abs(flat).max(1),
    "l2": np.sqrt((flat**2).sum(1)),
    "l1": np.abs(flat).sum(1),
  }[norm]


@pytest.mark.parametrize("norm", norms.NORMS)
@pytest.mark.parametrize("domain", [DOMAIN, None])
@pytest.mark.parametrize("per_example_eps", [False, True])
def test_projection_lands_in_ball_and_domain(norm, domain, per_example_eps):
  x, far = _random_batch(1)
  eps = np.linspace(0.0, 2.0, 6, dtype=np.float32) if per_example_eps else 0.7
  projected = np.asarray(project(far, x, eps, norm=norm, domain=domain))
  assert np.all(_norm(projected - x, norm) <= eps + TOL)
  if domain is not None:
    assert projected.min() >= 0.0 and projected.max() <= 1.0
  # Idempotent: a projected point is a fixed point.
  np.testing.assert_allclose(
    project(projected, x, eps, norm=norm, domain=domain), projected, atol=1e-6
  )


@pytest.mark.parametrize("norm", norms.NORMS)
def test_points_inside_are_unchanged(norm):
  x, far = _random_batch(2)
  near = x + 1e-3 * np.tanh(far - x) / far[0].size  # ||δ||_p << 1.
  np.testing.assert_allclose(
    project(near, x, 1.0, norm=norm, domain=None), near, atol=1e-7
  )


def test_linf_projection_is_the_box_projection():
  x, far = _random_batch(3)
  expected = np.clip(np.clip(far, x - 0.1, x + 0.1), 0.0, 1.0)
  np.testing.assert_allclose(project(far, x, 0.1, norm="linf"), expected)


def test_l2_projection_rescales_onto_the_sphere():
  x = np.zeros((1, 2), np.float32)
  np.testing.assert_allclose(
    project(np.array([[3.0, 4.0]]), x, 1.0, norm="l2", domain=None),
    [[0.6, 0.8]],
    rtol=1e-6,
  )
  # Clip after projection, as the spec's Decision requires.
  np.testing.assert_allclose(
    project(x + 0.5 + np.array([[3.0, -4.0]]), x + 0.5, 1.0, norm="l2"),
    [[1.0, 0.0]],
    rtol=1e-6,
  )


def test_l1_projection_per_example_radius_and_zero_radius():
  x = np.full((2, 3), 0.5, np.float32)
  x_adv = x + np.array([[0.4, -0.2, 0.0], [0.3, 0.3, 0.3]], np.float32)
  projected = project(x_adv, x, np.array([0.2, 0.0], np.float32), norm="l1")
  np.testing.assert_allclose(projected[0] - x[0], [0.2, 0.0, 0.0], atol=1e-7)
  np.testing.assert_array_equal(projected[1], x[1])


def test_bad_arguments_raise_clear_errors():
  x, far = _random_batch(5)
  with pytest.raises(ValueError, match="Unknown norm 'l3'"):
    projections.project(far, x, 0.1, norm="l3")
  with pytest.raises(ValueError, match="eps must be non-negative"):
    projections.project(far, x, -0.1, norm="l2")
  with pytest.raises(ValueError, match=r"eps of shape \(5,\) does not fit"):
    projections.project(far, x, np.ones(5), norm="l1")
  with pytest.raises(ValueError, match="domain lower bound 1.0 exceeds"):
    projections.project(far, x, 0.1, norm="linf", domain=(1.0, 0.0))
