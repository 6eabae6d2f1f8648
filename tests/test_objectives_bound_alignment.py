"""Tests for cure_jax.objectives.bound_alignment."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.objectives.bound_alignment import (
  DIRECTIONS,
  DIRECTIONS_OVER,
  TWO_NORM_DIRECTION,
  aligned_kl,
  bound_alignment,
  bound_alignment_over,
)

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


# --- N norms ------------------------------------------------------------------


@pytest.mark.parametrize("stop_gradient", [False, True])
@pytest.mark.parametrize("direction", DIRECTIONS_OVER)
def test_two_norm_case_is_bit_identical(direction, stop_gradient):
  o_linf, o_l2 = _random_logits(8), _random_logits(9)
  certified_linf = jnp.array([True, False, True, True, False, False])
  certified_l2 = jnp.array([False, True, True, False, True, False])
  two = functools.partial(
    bound_alignment,
    direction=TWO_NORM_DIRECTION[direction],
    stop_gradient=stop_gradient,
  )

  def over(o_linf, o_l2):
    return bound_alignment_over(
      {"l2": o_l2, "linf": o_linf},
      {"linf": certified_linf, "l2": certified_l2},
      direction=direction,
      stop_gradient=stop_gradient,
    )

  np.testing.assert_array_equal(
    over(o_linf, o_l2), two(o_linf, o_l2, certified_linf, certified_l2)
  )
  grads_two = jax.grad(two, argnums=(0, 1))(
    o_linf, o_l2, certified_linf, certified_l2
  )
  for got, want in zip(jax.grad(over, argnums=(0, 1))(o_linf, o_l2), grads_two):
    np.testing.assert_array_equal(got, want)


# Three norms, two examples, K = 2: p∞ = [½, ½] for both; p2 = [¼, ¾] and
# [½, ½]; p1 = [½, ½] and [¼, ¾].
THREE_LOGITS = {
  "linf": jnp.zeros((2, 2)),
  "l2": jnp.array([[0.0, LN3], [0.0, 0.0]]),
  "l1": jnp.array([[0.0, 0.0], [0.0, LN3]]),
}
# KL([¼, ¾] ‖ [½, ½]) = ¼ ln ½ + ¾ ln 3/2.
KL_QUARTER_TO_HALF = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)


def test_three_norms_by_hand():
  certified = {
    "linf": jnp.array([True, False]),
    "l2": jnp.array([True, True]),
    "l1": jnp.array([False, True]),
  }
  # others → l∞: l2 on {0, 1}: (KL(p2,0‖p∞) + 0)/2; l1 on {1}: KL(p1,1‖p∞).
  # Averaged over the two other norms.
  forward = bound_alignment_over(THREE_LOGITS, certified)
  np.testing.assert_allclose(
    forward, (KL_QUARTER_TO_HALF / 2 + KL_QUARTER_TO_HALF) / 2, rtol=1e-6
  )
  # l∞ → others on {0}: KL(p∞ ‖ p2,0) = KL_HALF_TO_QUARTER and KL(p∞ ‖ p1,0)
  # = 0, averaged.
  reverse = bound_alignment_over(
    THREE_LOGITS, certified, direction="reference_to_others"
  )
  np.testing.assert_allclose(reverse, KL_HALF_TO_QUARTER / 2, rtol=1e-6)
  both = bound_alignment_over(THREE_LOGITS, certified, direction="both")
  np.testing.assert_allclose(both, forward + reverse, rtol=1e-6)
  # Each other norm's term equals the two-norm loss on that pair.
  pairs = [
    aligned_kl(THREE_LOGITS[n], THREE_LOGITS["linf"], certified[n])
    for n in ("l2", "l1")
  ]
  np.testing.assert_allclose(forward, (pairs[0] + pairs[1]) / 2, rtol=1e-6)


def test_three_norms_another_reference_and_empty_sets():
  nobody = {name: jnp.zeros(2, bool) for name in THREE_LOGITS}
  for direction in DIRECTIONS_OVER:
    loss, grads = jax.value_and_grad(
      lambda o: bound_alignment_over(o, nobody, direction=direction)
    )(THREE_LOGITS)
    assert loss == 0.0
    for grad in grads.values():
      np.testing.assert_array_equal(grad, 0.0)
  # Reference l2: l∞ and l1 are aligned to it on their certified sets.
  certified = {name: jnp.ones(2, bool) for name in THREE_LOGITS}
  loss = bound_alignment_over(THREE_LOGITS, certified, reference="l2")
  want = (
    aligned_kl(THREE_LOGITS["linf"], THREE_LOGITS["l2"], certified["linf"])
    + aligned_kl(THREE_LOGITS["l1"], THREE_LOGITS["l2"], certified["l1"])
  ) / 2
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_three_norms_stop_gradient_and_jit():
  logits = {name: _random_logits(20 + i) for i, name in enumerate(THREE_LOGITS)}
  certified = {name: jnp.ones(6, bool) for name in logits}

  def grads(stop_gradient):
    return jax.grad(
      lambda o: bound_alignment_over(o, certified, stop_gradient=stop_gradient)
    )(logits)

  stopped, free = grads(True), grads(False)
  for name in ("l2", "l1"):  # The targets of 'others_to_reference'.
    np.testing.assert_array_equal(stopped[name], 0.0)
    assert np.abs(free[name]).max() > 1e-3
  assert np.abs(stopped["linf"]).max() > 1e-3
  fn = functools.partial(bound_alignment_over, direction="both")
  np.testing.assert_allclose(
    jax.jit(fn)(logits, certified), fn(logits, certified), rtol=1e-6
  )


def test_over_errors_say_what_to_fix():
  certified = {name: jnp.ones(2, bool) for name in THREE_LOGITS}
  with pytest.raises(ValueError, match="others_to_reference"):
    bound_alignment_over(THREE_LOGITS, certified, direction="l2_to_linf")
  with pytest.raises(ValueError, match="same keys"):
    bound_alignment_over(THREE_LOGITS, {"linf": certified["linf"]})
  with pytest.raises(ValueError, match="reference norm 'l0'"):
    bound_alignment_over(THREE_LOGITS, certified, reference="l0")
  with pytest.raises(ValueError, match="at least one other"):
    bound_alignment_over(
      {"linf": THREE_LOGITS["linf"]}, {"linf": certified["linf"]}
    )
  with pytest.raises(ValueError, match="mappings from norm names"):
    bound_alignment_over(tuple(THREE_LOGITS.values()), certified)
  with pytest.raises(ValueError, match="boolean mask"):
    bound_alignment_over(
      THREE_LOGITS, {**certified, "l1": jnp.ones(2, jnp.float32)}
    )
