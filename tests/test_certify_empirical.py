"""Tests for cure_jax/certify/empirical.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import attacks
from cure_jax.certify import empirical

SETTINGS = empirical.PGDSettings(steps=20, restarts=2)
# ε / ε* for four copies of one point: robust exactly below the threshold.
FACTORS = np.array([0.8, 0.95, 1.05, 1.25], np.float32)
DUAL = {"linf": 1, "l2": 2, "l1": np.inf}


def linear_apply(variables, x, train):
  """Two logits of a linear model: z = W x + b (``train`` is unused)."""
  del train
  return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


def _linear_problem(margin=1.0):
  """z_0 − z_1 = d·x + c with d random; grey 8×8 images with label 0.

  At x = 0.5 the clean margin is ``margin``, and without clipping (the radii
  used stay inside [0, 1]) the least margin over B_p(x, ε) is
  margin − ε ||d||_q, so the point is robust iff ε < ε* = margin / ||d||_q.
  """
  d = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (64,))
  c = margin - 0.5 * jnp.sum(d)
  variables = {
    "w": jnp.stack([d / 2, -d / 2], axis=1),
    "b": jnp.array([c / 2, -c / 2]),
  }
  x = jnp.full((len(FACTORS), 8, 8, 1), 0.5)
  labels = jnp.zeros(len(FACTORS), jnp.int32)
  return variables, x, labels, d


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_pgd_finds_the_exact_threshold_of_a_linear_model(norm):
  variables, x, labels, d = _linear_problem()
  threshold = 1.0 / np.linalg.norm(np.asarray(d), DUAL[norm])
  assert threshold * FACTORS.max() < 0.4  # The optimum stays inside [0, 1].
  robust = empirical.pgd_robust_jit(
    linear_apply,
    norm,
    SETTINGS,
    variables,
    x,
    labels,
    jnp.asarray(threshold * FACTORS),
    jax.random.PRNGKey(1),
  )
  np.testing.assert_array_equal(robust, FACTORS < 1)


@pytest.mark.parametrize("loss", ["margin", "ce"])
def test_zero_radius_keeps_exactly_the_correct_points(loss):
  variables, x, _, _ = _linear_problem()
  labels = jnp.array([0, 1, 0, 1])  # Class 0 wins at x: 1 and 3 are wrong.
  robust = empirical.pgd_robust_jit(
    linear_apply,
    "linf",
    SETTINGS._replace(loss=loss),
    variables,
    x,
    labels,
    jnp.zeros(len(FACTORS)),
    jax.random.PRNGKey(0),
  )
  np.testing.assert_array_equal(robust, [True, False, True, False])


@pytest.mark.parametrize(
  "settings,message",
  [
    (empirical.PGDSettings(steps=0), "steps must be an int >= 1"),
    (empirical.PGDSettings(restarts=0), "restarts must be an int >= 1"),
    (empirical.PGDSettings(relative_step_size=0.0), "relative_step_size"),
    (empirical.PGDSettings(loss="hinge"), "Unknown attack loss"),
    (dict(steps=10), "must be a PGDSettings"),
  ],
)
def test_bad_settings_explain_the_fix(settings, message):
  with pytest.raises(ValueError, match=message):
    empirical.check_pgd_settings(settings)


EPS = 4.0  # an l1 radius at which some, not all, of the points are robust


def test_l1_robustness_is_the_and_of_dense_pgd_and_the_sparse_attack():
  key = jax.random.PRNGKey(3)
  k_w, k_x = jax.random.split(key)
  variables = {
    "w": 0.5 * jax.random.normal(k_w, (64, 2)),
    "b": jnp.zeros(2),
  }
  x = jax.random.uniform(k_x, (16, 8, 8, 1))
  logits = linear_apply(variables, x, False)
  labels = jnp.argmax(logits, -1)
  settings = empirical.PGDSettings(steps=10)
  got = empirical.pgd_robust(
    linear_apply,
    variables,
    x,
    labels,
    norm="l1",
    eps=EPS,
    key=key,
    settings=settings,
  )

  def logits_fn(z):
    return linear_apply(variables, z, False)

  dense = attacks.pgd(
    logits_fn,
    x,
    labels,
    norm="l1",
    eps=EPS,
    steps=10,
    step_size=settings.relative_step_size * EPS / 10,
    key=key,
    restarts=settings.restarts,
    random_start=True,
    loss=settings.loss,
    domain=(0.0, 1.0),
    l1_sparsity=settings.l1_sparsity,
  )
  sparse = attacks.sparse_l1_attack(
    logits_fn,
    x,
    labels,
    eps=EPS,
    steps=10,
    key=jax.random.fold_in(key, 1),
    restarts=settings.restarts,
    loss=settings.loss,
    domain=(0.0, 1.0),
  )
  expected = ~attacks.is_adversarial(logits_fn, dense, labels) & (
    ~attacks.is_adversarial(logits_fn, sparse, labels)
  )
  np.testing.assert_array_equal(got, expected)
  assert 0 < int(jnp.sum(got)) < len(labels)  # the radius separates points
