"""Linear relaxations of smooth activations (tanh, sigmoid, exp, log, ...).

The lines of `relaxations.smooth_relaxation` must enclose the function on
its whole input interval — checked on a dense grid for every supported
primitive and every kind of interval (convex part, concave part, crossing
the inflection point, degenerate, at the edge of the domain) — and the
CROWN rule built on them is checked by hand on one neuron, for log at 0,
and for jit and grad. Whole networks are checked by sampling and attack in
`test_bounds_soundness.py`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.bounds import LinfBall, crown, crown_ibp, ibp, relaxations

FUNCTIONS = {
  "exp": jnp.exp,
  "exp2": jnp.exp2,
  "expm1": jnp.expm1,
  "log": jnp.log,
  "log1p": jnp.log1p,
  "sqrt": jnp.sqrt,
  "tanh": jnp.tanh,
  "logistic": jax.nn.sigmoid,
  "erf": jax.scipy.special.erf,
  "atan": jnp.arctan,
  "asinh": jnp.arcsinh,
  "cbrt": jnp.cbrt,
  "sinh": jnp.sinh,
}
# Intervals [l, u] on every side of the inflection point 0, wide and narrow.
GENERAL = [
  (-3.0, -1.0),
  (-2.0, -1.9),
  (-1.5, 0.0),
  (-2.0, 0.5),
  (-0.5, 3.0),
  (-4.0, 4.0),
  (0.0, 2.0),
  (0.7, 0.8),
  (1.0, 5.0),
  (-1e-3, 2e-3),
]
POSITIVE = [(0.0, 1.0), (0.0, 1e-4), (1e-3, 4.0), (0.5, 0.6), (2.0, 30.0)]
DOMAIN = {
  "log": POSITIVE,
  "sqrt": POSITIVE,
  "log1p": POSITIVE + [(-0.5, 1.0), (-0.9, -0.1)],
}


def _derivative(fn):
  return lambda v: jax.jvp(fn, (v,), (jnp.ones_like(v),))[1]


def _relax(name, lower, upper):
  fn = FUNCTIONS[name]
  return relaxations.smooth_relaxation(
    fn,
    _derivative(fn),
    relaxations.SMOOTH_CURVATURE[name],
    jnp.asarray(lower, jnp.float32),
    jnp.asarray(upper, jnp.float32),
  )


def test_every_supported_primitive_is_tested():
  assert set(FUNCTIONS) == set(relaxations.SMOOTH_CURVATURE)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_lines_enclose_the_function_on_the_whole_interval(name):
  intervals = DOMAIN.get(name, GENERAL)
  lower, upper = (np.array(v, np.float32) for v in zip(*intervals))
  relax = _relax(name, lower, upper)
  t = np.linspace(0.0, 1.0, 2001, dtype=np.float64)[:, None]
  x = lower + t * (upper - lower)  # [2001, intervals], float64
  f = np.asarray(FUNCTIONS[name](jnp.asarray(x, jnp.float32)), np.float64)
  below = np.asarray(relax.lower_slope, np.float64) * x + np.asarray(
    relax.lower_offset, np.float64
  )
  above = np.asarray(relax.upper_slope, np.float64) * x + np.asarray(
    relax.upper_offset, np.float64
  )
  finite = np.isfinite(f)
  tolerance = 1e-5 * (1.0 + np.abs(np.where(finite, f, 0.0)))
  assert np.all((below <= f + tolerance) | ~finite), name
  assert np.all((above >= f - tolerance) | ~finite), name
  # Not the interval bound in disguise: wide intervals with finite ends
  # get sloped lines (log at 0 falls back to the interval, by design).
  wide = ((upper - lower) > 0.05) & np.isfinite(f[0])
  assert np.all(np.asarray(relax.lower_slope)[wide] > 0), name


def test_tanh_on_its_concave_part_by_hand():
  """On [0.5, 1]: chord below, tangent at 0.75 above."""
  relax = _relax("tanh", [0.5], [1.0])
  chord = (np.tanh(1.0) - np.tanh(0.5)) / 0.5
  tangent = 1.0 - np.tanh(0.75) ** 2
  np.testing.assert_allclose(relax.lower_slope, [chord], rtol=1e-5)
  np.testing.assert_allclose(
    relax.lower_offset, [np.tanh(0.5) - 0.5 * chord], rtol=1e-5
  )
  np.testing.assert_allclose(relax.upper_slope, [tangent], rtol=1e-5)
  np.testing.assert_allclose(
    relax.upper_offset, [np.tanh(0.75) - 0.75 * tangent], rtol=1e-5
  )


def test_sigmoid_across_zero_uses_the_least_slope_through_the_ends():
  """DeepPoly's S-shaped rule: λ = min(σ'(l), σ'(u)) for both lines."""
  relax = _relax("logistic", [-1.0], [3.0])
  sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))
  least = sigmoid(3.0) * (1.0 - sigmoid(3.0))
  np.testing.assert_allclose(relax.lower_slope, [least], rtol=1e-5)
  np.testing.assert_allclose(relax.upper_slope, [least], rtol=1e-5)
  np.testing.assert_allclose(
    relax.lower_offset, [sigmoid(-1.0) + least], rtol=1e-5
  )
  np.testing.assert_allclose(
    relax.upper_offset, [sigmoid(3.0) - 3.0 * least], rtol=1e-5
  )


def test_a_point_interval_gives_the_value_itself():
  relax = _relax("exp", [0.3], [0.3])
  assert float(relax.lower_slope[0]) == float(relax.upper_slope[0]) == 0.0
  np.testing.assert_allclose(relax.lower_offset, np.exp([0.3]), rtol=1e-6)
  np.testing.assert_allclose(relax.upper_offset, np.exp([0.3]), rtol=1e-6)


def test_crown_of_one_neuron_by_hand():
  """tanh(x) - x/2 over x ∈ [0.5, 1], by hand.

  Below: the chord minus x/2 has slope 0.599 - 0.5 > 0, least at x = 0.5,
  where the chord touches: tanh(0.5) - 0.25, the exact minimum. Above: the
  tangent at 0.75 minus x/2 has slope 0.597 - 0.5 > 0, largest at x = 1:
  tanh(0.75) + 0.25 tanh'(0.75) - 0.5 = 0.2844, above the true maximum
  0.2664 (at tanh² = 1/2) and well below IBP's tanh(1) - 0.25 = 0.5116.
  """
  bounds = crown(lambda x: jnp.tanh(x) - 0.5 * x)(
    LinfBall(jnp.full((1, 1), 0.75), 0.25)
  )
  tangent = 1.0 - np.tanh(0.75) ** 2
  np.testing.assert_allclose(bounds.lower, [[np.tanh(0.5) - 0.25]], rtol=1e-5)
  np.testing.assert_allclose(
    bounds.upper, [[np.tanh(0.75) + 0.25 * tangent - 0.5]], rtol=1e-5
  )


def test_log_at_zero_gives_minus_infinity_only_where_it_is_used():
  """log over [0, 1] has no finite lower line; an output not using it stays
  exact (a zero coefficient times -inf must not make a NaN)."""

  def net(x):
    return jnp.stack([jnp.log(x[:, 0]), 2.0 * x[:, 1]], axis=-1)

  x = jnp.array([[0.5, 0.25]])
  for method in (crown, crown_ibp):
    bounds = method(net)(LinfBall(x, 0.5))
    assert not np.any(np.isnan(bounds.lower)) and not np.any(
      np.isnan(bounds.upper)
    ), method.__name__
    assert float(bounds.lower[0, 0]) == -np.inf
    np.testing.assert_allclose(bounds.upper[0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(bounds.lower[0, 1], -0.5, rtol=1e-6)
    np.testing.assert_allclose(bounds.upper[0, 1], 1.5, rtol=1e-6)


def _tanh_net(params, x):
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jax.nn.sigmoid(hidden @ params["w2"]) @ params["w3"]


def _params():
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  return {
    "w1": jax.random.normal(k1, (5, 6)),
    "b1": jax.random.normal(k2, (6,)),
    "w2": jax.random.normal(k3, (6, 6)),
    "w3": jax.random.normal(k4, (6, 3)),
  }


def test_crown_is_tighter_than_ibp_and_jit_equals_no_jit():
  params = _params()
  ball = LinfBall(jax.random.uniform(jax.random.key(1), (4, 5)), 0.2)
  eager = crown(_tanh_net)(params, ball)
  jitted = jax.jit(crown(_tanh_net))(params, ball)
  np.testing.assert_allclose(eager.lower, jitted.lower, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(eager.upper, jitted.upper, rtol=1e-5, atol=1e-6)
  box = ibp(_tanh_net)(params, ball)
  assert np.all(eager.upper - eager.lower <= box.upper - box.lower + 1e-5)
  assert np.mean(eager.upper - eager.lower) < 0.9 * np.mean(
    box.upper - box.lower
  )


def test_a_crown_ibp_loss_of_a_tanh_network_has_finite_gradients():
  params = _params()
  ball = LinfBall(jax.random.uniform(jax.random.key(1), (4, 5)), 0.2)
  loss = lambda p: jnp.sum(crown_ibp(_tanh_net)(p, ball).upper)
  grads = jax.jit(jax.grad(loss))(params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert any(np.any(g != 0) for g in leaves)
