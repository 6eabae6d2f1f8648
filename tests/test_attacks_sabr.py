"""Tests for cure_jax/attacks/sabr.py."""

import functools

import jax
import numpy as np
import pytest

from cure_jax.attacks import projected_gradient, sabr


def test_milestones_for_eight_steps():
  # ⌈0.5·8⌉ = ⌈4⌉ = 4, ⌈0.8·8⌉ = ⌈6.4⌉ = 7, ⌈0.9·8⌉ = ⌈7.2⌉ = 8.
  assert sabr.sabr_milestones(8) == (4, 7, 8)
  assert sabr.sabr_milestones(10) == (5, 8, 9)
  assert sabr.sabr_milestones(1) == (1, 1, 1)
  # In floating point 0.9·110 = 99.00000000000001, whose ceiling is 100.
  assert sabr.sabr_milestones(110) == (55, 88, 99)


def test_milestones_are_the_ceilings():
  # m = ⌈(p/q)·n⌉  <=>  q·(m − 1) < p·n <= q·m, in integers only.
  for steps in range(1, 1001):
    milestones = sabr.sabr_milestones(steps)
    for (p, q), m in zip([(1, 2), (4, 5), (9, 10)], milestones):
      assert q * (m - 1) < p * steps <= q * m, (steps, milestones)


def test_step_sizes_for_eight_steps():
  eps = 0.3
  # Steps 0–3 before the first milestone (4), 4–6 before the second (7),
  # step 7 before the third (8): one, two and three decays would follow.
  expected = [0.5 * eps] * 4 + [0.05 * eps] * 3 + [0.005 * eps]
  np.testing.assert_allclose(sabr.sabr_step_sizes(eps, 8), expected, rtol=1e-6)
  np.testing.assert_allclose(
    sabr.sabr_step_sizes(eps, 8, norm="l2"),
    np.array(expected) * 0.2 / 0.5,
    rtol=1e-6,
  )


def test_step_sizes_per_example_and_from_the_decay():
  eps = np.array([0.1, 0.2], np.float32)
  sizes = sabr.sabr_step_sizes(eps, 10)
  assert sizes.shape == (10, 2)
  decay = sabr.sabr_step_decay(10)
  # Milestones 5, 8, 9: multipliers 1 (t < 5), 0.1, 0.01, 0.001 (t = 9).
  assert [decay(t) for t in (0, 4, 5, 7, 8, 9)] == pytest.approx(
    [1, 1, 0.1, 0.1, 0.01, 0.001]
  )
  np.testing.assert_allclose(sizes[9], 0.5 * eps * 1e-3, rtol=1e-5)
  assert sabr.sabr_step_sizes(0.1, 0).shape == (0,)


def _linear_model(seed):
  rng = np.random.default_rng(seed)
  weights = rng.normal(size=(6, 2)).astype(np.float32)
  x = rng.uniform(size=(8, 6)).astype(np.float32)
  y = rng.integers(0, 2, size=8)
  d = (weights[:, y] - weights[:, 1 - y]).T
  return lambda z: z @ weights, x, y, d


def test_linf_attack_finds_the_worst_corner_of_a_linear_model():
  # Four steps of ε/2 reach the corner x − ε·sign(w_y − w_j) from anywhere in
  # the box; the decayed steps cannot leave it again.
  logits_fn, x, y, d = _linear_model(0)
  eps = np.full(8, 0.1, np.float32)
  attack = jax.jit(functools.partial(sabr.sabr_attack, logits_fn))
  np.testing.assert_allclose(
    attack(x, y, eps=eps, key=jax.random.key(1)),
    np.clip(x - 0.1 * np.sign(d), 0, 1),
    atol=1e-6,
  )


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attack_is_pgd_with_sabr_settings(norm):
  logits_fn, x, y, _ = _linear_model(2)

  @jax.jit
  def both(key):
    expected = projected_gradient.pgd(
      logits_fn,
      x,
      y,
      norm=norm,
      eps=0.4,
      steps=8,
      step_size=sabr.SABR_STEP_FRACTION[norm] * 0.4,
      key=key,
      step_decay=sabr.sabr_step_decay(8),
      loss="ce",
      random_start=True,
    )
    return sabr.sabr_attack(
      logits_fn, x, y, eps=0.4, key=key, norm=norm
    ), expected

  actual, expected = both(jax.random.key(3))
  np.testing.assert_allclose(actual, expected, atol=1e-6)
  # The l2 variant keeps CURE's Decision: the point stays in the l2 ball.
  if norm == "l2":
    assert np.all(
      np.linalg.norm(np.asarray(expected) - x, axis=1) <= 0.4 + 1e-6
    )


def test_bad_arguments_raise_clear_errors():
  logits_fn, x, y, _ = _linear_model(4)
  with pytest.raises(ValueError, match=r"defined for norm in \('linf', 'l2'\)"):
    sabr.sabr_attack(logits_fn, x, y, eps=0.1, key=jax.random.key(0), norm="l1")
  with pytest.raises(ValueError, match="eps must be non-negative"):
    sabr.sabr_attack(logits_fn, x, y, eps=-0.1, key=jax.random.key(0))
  with pytest.raises(ValueError, match="eps must be non-negative"):
    sabr.sabr_step_sizes(-1.0, 8)
  with pytest.raises(ValueError, match="steps must be an int >= 0"):
    sabr.sabr_step_sizes(0.1, 8.0)
