"""Tests for cure_jax.objectives.regularizers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.bounds import Interval, LinfBall, ibp
from cure_jax.models import MLP
from cure_jax.objectives.regularizers import l1_penalty, warmup_regularizer


def _interval(lower, upper):
  return Interval(
    jnp.array([lower], jnp.float32), jnp.array([upper], jnp.float32)
  )


# Centers [4, −1, 1, −1], radii [1, ½, 2, 2]: one active, one inactive and
# two unstable neurons.
MIXED = _interval([3.0, -1.5, -1.0, -3.0], [5.0, -0.5, 3.0, 1.0])
ALL_ACTIVE = _interval([1.0, 2.0], [3.0, 2.0])
ALL_INACTIVE = _interval([-3.0, -2.0], [-1.0, -1.0])
INPUT_RADIUS = 0.55


def _reference(preactivations, input_radius, tol=0.5):
  """The SABR/CURE ``compute_bound_reg`` line by line, in IEEE numpy."""
  total = 0.0
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    for lb, ub in preactivations:
      lb, ub = np.asarray(lb, np.float64), np.asarray(ub, np.float64)
      center = (ub + lb) / 2
      radius = ((ub - lb) / 2).mean()
      total += max(tol - input_radius / max(radius, 1e-12), 0.0) / tol
      act, inact = lb > 0, ub < 0
      mean_act = (center * act).mean()
      mean_inact = (center * inact).mean()
      delta = (center - center.mean()) ** 2
      var_act, var_inact = (delta * act).sum(), (delta * inact).sum()
      mean_ratio = np.float64(mean_act) / -np.float64(mean_inact)
      var_ratio = np.float64(var_act) / np.float64(var_inact)
      mean_ratio = np.minimum(mean_ratio, 1 / np.maximum(mean_ratio, 1e-12))
      var_ratio = np.minimum(var_ratio, 1 / np.maximum(var_ratio, 1e-12))
      relu = (max(tol - mean_ratio, 0.0) + max(tol - var_ratio, 0.0)) / tol
      if np.isfinite(relu):
        total += relu
  return total / len(preactivations)


def test_mixed_layer_by_hand():
  # Tightness: mean radius 1.375, 0.55 / 1.375 = 0.4 -> (0.5 − 0.4) / 0.5.
  tightness = 0.2
  # Means: m_act = 4/4, m_inact = −1/4 -> ρ = 4, folded to 1/4.
  # Variances about mean c = 0.75: v_act = 3.25², v_inact = 1.75²
  # -> ρ = (3.25/1.75)², folded to 49/169.
  balance = ((0.5 - 0.25) + (0.5 - 49 / 169)) / 0.5
  np.testing.assert_allclose(
    warmup_regularizer([MIXED], INPUT_RADIUS), tightness + balance, rtol=1e-6
  )


def test_all_active_and_all_inactive_layers_by_hand():
  # All active: radius ½ -> tightness 0; no inactive neuron, so the balance
  # term is NaN/−∞ in the reference and dropped.
  np.testing.assert_allclose(
    warmup_regularizer([ALL_ACTIVE], INPUT_RADIUS), 0.0, atol=1e-7
  )
  # All inactive: radius ¾ -> tightness 0; m_act = v_act = 0, so both folded
  # ratios are 0 and the balance term is (0.5 + 0.5) / 0.5.
  np.testing.assert_allclose(
    warmup_regularizer([ALL_INACTIVE], INPUT_RADIUS), 2.0, rtol=1e-6
  )
  layers = [MIXED, ALL_ACTIVE, ALL_INACTIVE]
  np.testing.assert_allclose(
    warmup_regularizer(layers, INPUT_RADIUS),
    (0.2 + (0.25 + 0.5 - 49 / 169) / 0.5 + 0.0 + 2.0) / 3,
    rtol=1e-6,
  )


def _random_layers(seed):
  rng = np.random.default_rng(seed)
  layers = []
  for shape in [(4, 8), (4, 3, 3, 2), (4, 5)]:
    center = rng.normal(size=shape)
    radius = rng.uniform(0.0, 1.5, size=shape)
    layers.append(
      Interval(
        jnp.asarray(center - radius, jnp.float32),
        jnp.asarray(center + radius, jnp.float32),
      )
    )
  # Layers the reference partly skips: all active, all inactive, all
  # unstable, and one with a single inactive neuron (v_inact = 0).
  layers.append(_interval([0.5, 1.0, 2.0], [1.0, 3.0, 2.5]))
  layers.append(_interval([-2.0, -1.0, -4.0], [-1.0, -0.5, -3.0]))
  layers.append(_interval([-1.0, -2.0], [1.0, 0.5]))
  layers.append(_interval([1.0, -3.0, -1.0], [2.0, -1.0, 2.0]))
  return layers


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_reference_formula(seed):
  layers = _random_layers(seed)
  regularizer = jax.jit(warmup_regularizer)
  for radius in (0.05, 0.6):
    np.testing.assert_allclose(
      regularizer(layers, radius), _reference(layers, radius), rtol=1e-5
    )
    for layer in layers:
      np.testing.assert_allclose(
        regularizer([layer], radius),
        _reference([layer], radius),
        rtol=1e-5,
        atol=1e-7,
      )


def test_gradient_is_finite_for_degenerate_layers():
  layers = [ALL_ACTIVE, ALL_INACTIVE, MIXED, _interval([-1.0], [1.0])]
  grads = jax.jit(jax.grad(warmup_regularizer))(layers, INPUT_RADIUS)
  for grad in jax.tree.leaves(grads):
    assert np.all(np.isfinite(grad))
  # The dropped balance term of the all-active layer contributes nothing,
  # and its tightness term is inactive (r_in / radius > τ): zero gradient.
  np.testing.assert_array_equal(grads[0].lower, 0.0)
  np.testing.assert_array_equal(grads[0].upper, 0.0)
  # The mixed layer's terms are active: a non-zero gradient.
  assert np.abs(grads[2].upper).max() > 0


def test_jit_equals_eager():
  layers = _random_layers(2)
  np.testing.assert_allclose(
    jax.jit(warmup_regularizer)(layers, 0.3),
    warmup_regularizer(layers, 0.3),
    rtol=1e-6,
  )


def test_on_ibp_preactivations_of_a_network():
  model = MLP(num_classes=3, hidden_widths=(8, 6))
  x = jax.random.uniform(jax.random.key(0), (4, 5))
  variables = model.init(jax.random.key(1), x, train=False)
  eps = 0.1

  def regularizer(variables):
    _, preactivations = ibp(model.apply, return_preactivations=True)(
      variables, LinfBall(x, eps, domain=(0.0, 1.0)), train=False
    )
    assert len(preactivations) == 2
    # The input box is [x − ε, x + ε] ∩ [0, 1]: its mean half-width.
    box_radius = jnp.mean(jnp.minimum(x + eps, 1) - jnp.maximum(x - eps, 0)) / 2
    return warmup_regularizer(preactivations, box_radius), preactivations

  (value, preactivations), grads = jax.jit(
    jax.value_and_grad(regularizer, has_aux=True)
  )(variables)
  radius = np.mean(np.minimum(x + eps, 1) - np.maximum(x - eps, 0)) / 2
  np.testing.assert_allclose(
    value, _reference([tuple(p) for p in preactivations], radius), rtol=1e-5
  )
  assert value > 0
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_warmup_regularizer_errors():
  with pytest.raises(ValueError, match="preactivations is empty"):
    warmup_regularizer([], 0.1)
  with pytest.raises(ValueError, match="tol must be positive"):
    warmup_regularizer([MIXED], 0.1, tol=0.0)


PARAMS = {
  "conv_0": {"kernel": jnp.array([[1.0, -2.0]])},
  "conv_0_bn": {"scale": jnp.array([-0.5]), "bias": jnp.array([0.25])},
  "logits": {"kernel": jnp.array([[-3.0], [1.0]]), "bias": jnp.array([-4.0])},
}


def test_l1_penalty_sums_every_parameter_like_the_reference():
  assert l1_penalty(PARAMS) == pytest.approx(3.0 + 0.75 + 4.0 + 4.0)


def test_l1_penalty_kernels_only():
  assert l1_penalty(PARAMS, kernels_only=True) == pytest.approx(3.0 + 4.0)
  grads = jax.grad(l1_penalty)(PARAMS, kernels_only=True)
  np.testing.assert_array_equal(grads["logits"]["kernel"], [[-1.0], [1.0]])
  np.testing.assert_array_equal(grads["conv_0_bn"]["scale"], 0.0)


def test_l1_penalty_on_flax_params_and_jit():
  model = MLP(num_classes=3, hidden_widths=(4,))
  params = model.init(jax.random.key(0), jnp.zeros((1, 2)), train=False)[
    "params"
  ]
  want = sum(np.abs(leaf).sum() for leaf in jax.tree.leaves(params))
  np.testing.assert_allclose(jax.jit(l1_penalty)(params), want, rtol=1e-6)
  kernels = params["dense_0"]["kernel"], params["logits"]["kernel"]
  np.testing.assert_allclose(
    l1_penalty(params, kernels_only=True),
    sum(np.abs(k).sum() for k in kernels),
    rtol=1e-6,
  )


def test_l1_penalty_errors():
  with pytest.raises(ValueError, match="no parameters to penalize"):
    l1_penalty({})
  with pytest.raises(ValueError, match="found no 'kernel' leaf"):
    l1_penalty({"bias": jnp.ones(2)}, kernels_only=True)
