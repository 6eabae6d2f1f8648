"""Tests for cure_jax.objectives.bound_alignment."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.objectives.bound_alignment import DIRECTIONS, bound_alignment

LN3 = math.log(3.0)
# softmax rows: p2 = [1/2, 1/2], [1/4, 3/4], softmax([0, 1]);
#               p∞ = [1/4, 3/4], [1/2, 1/2], softmax([0, 1]).
O_L2 = jnp.array([[0.0, 0.0], [0.0, LN3], [0.0, 1.0]])
O_LINF = jnp.array([[0.0, LN3], [0.0, 0.0], [0.0, 1.0]])
CERT_L2 = jnp.array([True, False, True])
CERT_LINF = jnp.array([False, True, True])
# KL([1/2, 1/2] ‖ [1/4, 3/4]) = ½ ln 2 + ½ ln ⅔ = ½ ln(4/3).
KL_HALF_TO_QUARTER = 0.5 * math.log(4.0 / 3.0)


def test_default_direction_by_hand():
  # S = certified for l2 = {0, 2}; KL(p2 ‖ p∞) is ½ ln(4/3) and 0 there.
  loss = bound_alignment(O_LINF, O_L2, CERT_LINF, CERT_L2)
  np.testing.assert_allclose(loss, KL_HALF_TO_QUARTER / 2, rtol=1e-6)


def test_reverse_direction_by_hand():
  # S = certified for l∞ = {1, 2}; KL(p∞,1 ‖ p2,1) = KL([½, ½] ‖ [¼, ¾]).
  loss = bound_alignment(
    O_LINF, O_L2, CERT_LINF, CERT_L2, direction="linf_to_l2"
  )
  np.testing.assert_allclose(loss, KL_HALF_TO_QUARTER / 2, rtol=1e-6)


def test_direction_picks_the_target_and_its_certified_set():
  # Only example 0 selected, where p2 = [½, ½] and p∞ = [¼, ¾]: the two
  # directions give the two (different) KL divergences.
  only_first = jnp.array([True, False, False])
  forward = bound_alignment(O_LINF, O_L2, ~only_first, only_first)
  reverse = bound_alignment(
    O_LINF, O_L2, only_first, ~only_first, direction="linf_to_l2"
  )
  np.testing.assert_allclose(forward, KL_HALF_TO_QUARTER, rtol=1e-6)
  np.testing.assert_allclose(
    reverse, 0.25 * math.log(0.5) + 0.75 * math.log(1.5), rtol=1e-6
  )
  both = bound_alignment(O_LINF, O_L2, CERT_LINF, CERT_L2, direction="both")
  np.testing.assert_allclose(both, KL_HALF_TO_QUARTER, rtol=1e-6)


def _random_logits(seed, shape=(6, 5)):
  return jnp.asarray(
    np.random.default_rng(seed).normal(size=shape) * 3, jnp.float32
  )


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_zero_when_bounds_agree_positive_otherwise(direction):
  o = _random_logits(0)
  certified = jnp.array([True, False] * 3)
  assert bound_alignment(
    o, o, certified, certified, direction=direction
  ) == pytest.approx(0, abs=1e-6)
  assert (
    bound_alignment(
      o, _random_logits(1), certified, certified, direction=direction
    )
    > 1e-3
  )


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_empty_selection_gives_zero_and_finite_zero_gradient(direction):
  nobody = jnp.zeros(6, bool)
  o_linf, o_l2 = _random_logits(2) * 1e3, _random_logits(3) * 1e3
  loss_fn = functools.partial(
    bound_alignment,
    certified_linf=nobody,
    certified_l2=nobody,
    direction=direction,
  )
  loss, grads = jax.value_and_grad(loss_fn, argnums=(0, 1))(o_linf, o_l2)
  assert loss == 0.0
  for grad in grads:
    np.testing.assert_array_equal(grad, np.zeros_like(grad))


@pytest.mark.parametrize(
  "direction,target", [("l2_to_linf", 1), ("linf_to_l2", 0)]
)
def test_stop_gradient_stops_the_target_side_only(direction, target):
  certified = jnp.ones(6, bool)
  o_linf, o_l2 = _random_logits(4), _random_logits(5)

  def grads(stop_gradient):
    loss_fn = functools.partial(
      bound_alignment,
      certified_linf=certified,
      certified_l2=certified,
      direction=direction,
      stop_gradient=stop_gradient,
    )
    return jax.grad(loss_fn, argnums=(0, 1))(o_linf, o_l2)

  stopped, free = grads(True), grads(False)
  np.testing.assert_array_equal(stopped[target], 0.0)
  assert np.abs(free[target]).max() > 1e-3  # The reference: no stop-gradient.
  np.testing.assert_allclose(stopped[1 - target], free[1 - target], rtol=1e-5)
  assert np.abs(stopped[1 - target]).max() > 1e-3


def test_unselected_examples_get_no_gradient():
  grads = jax.grad(bound_alignment, argnums=(0, 1))(
    O_LINF * 2, O_L2 * 3, CERT_LINF, CERT_L2
  )
  for grad in grads:
    np.testing.assert_array_equal(grad[1], 0.0)  # Example 1 is not in S.


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_jit_equals_eager(direction):
  o_linf, o_l2 = _random_logits(6), _random_logits(7)
  certified_linf = jnp.array([True, True, False, True, False, False])
  certified_l2 = ~certified_linf
  fn = functools.partial(bound_alignment, direction=direction)
  np.testing.assert_allclose(
    jax.jit(fn)(o_linf, o_l2, certified_linf, certified_l2),
    fn(o_linf, o_l2, certified_linf, certified_l2),
    rtol=1e-6,
  )


def test_errors_say_what_to_fix():
  with pytest.raises(ValueError, match="l2_to_linf.*linf_to_l2"):
    bound_alignment(O_LINF, O_L2, CERT_LINF, CERT_L2, direction="l2")
  with pytest.raises(ValueError, match=r"one shape \[B, K\]"):
    bound_alignment(O_LINF, O_L2[:2], CERT_LINF, CERT_L2)
  with pytest.raises(ValueError, match="certified_l2 must be a boolean mask"):
    bound_alignment(O_LINF, O_L2, CERT_LINF, CERT_L2.astype(jnp.float32))
  with pytest.raises(ValueError, match="certified_linf must be a boolean"):
    bound_alignment(O_LINF, O_L2, CERT_LINF[:2], CERT_L2)
