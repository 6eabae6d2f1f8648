"""Leaky ReLU as one activation: the graph fusion and its bounds by hand.

Whole networks with leaky ReLU are checked by sampling and attack in
`test_bounds_soundness.py` (``piecewise_cnn``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.bounds import (
  Box,
  alpha_crown,
  crown,
  crown_ibp,
  graph,
  ibp,
  leaky_relu,
)


def _fused_eqns(fn, x):
  traced, _ = graph.trace(fn, (Box(x, x),), {})
  return leaky_relu.fuse(traced).eqns


def _fused_names(fn, x):
  return [eqn.name for eqn in _fused_eqns(fn, x)]


@pytest.mark.parametrize("slope", [0.01, 0.3])
def test_jax_leaky_relu_becomes_one_equation(slope):
  eqns = _fused_eqns(lambda x: jax.nn.leaky_relu(x, slope), jnp.zeros((1, 3)))
  names = [eqn.name for eqn in eqns]
  assert names.count("leaky_relu") == 1
  assert "select_n" not in names and "ge" not in names
  (eqn,) = [e for e in eqns if e.name == "leaky_relu"]
  assert eqn.primitive.negative_slope == pytest.approx(slope)


def test_what_is_not_a_leaky_relu_stays_as_it_is():
  x = jnp.zeros((1, 3))
  # A slope above 1 (not k x + (1 - k) relu(x) with k in [0, 1]).
  assert "leaky_relu" not in _fused_names(
    lambda v: jax.nn.leaky_relu(v, 2.0), x
  )

  # A comparison used elsewhere too.
  def reuses(v):
    positive = v >= 0
    return jnp.where(positive, v, 0.1 * v) + positive.astype(v.dtype)

  assert "leaky_relu" not in _fused_names(reuses, x)
  # Another threshold.
  assert "leaky_relu" not in _fused_names(
    lambda v: jnp.where(v >= 1.0, v, 0.1 * v), x
  )


def test_ibp_maps_the_ends():
  bounds = ibp(lambda v: jax.nn.leaky_relu(v, 0.1))(
    Box(jnp.array([[-1.0, -3.0, 1.0]]), jnp.array([[2.0, -1.0, 4.0]]))
  )
  np.testing.assert_allclose(bounds.lower, [[-0.1, -0.3, 1.0]], rtol=1e-6)
  np.testing.assert_allclose(bounds.upper, [[2.0, -0.1, 4.0]], rtol=1e-6)


def test_crown_and_alpha_crown_by_hand():
  """leaky(x) - 0.7 x over x ∈ [-1, 2], k = 0.1.

  Above: the ReLU chord 2/3 (x + 1) gives the line 0.7 x + 0.6, so the bound
  is 0.6, the exact maximum (at both ends). Below: CROWN's slope 1 (u > -l)
  gives 0.3 x, least -0.3 at x = -1; the exact minimum is 0 (at x = 0),
  which α-CROWN reaches with the ReLU slope 2/3. IBP gives [-1.5, 2.7].
  """
  fn = lambda v: jax.nn.leaky_relu(v, 0.1) - 0.7 * v
  box = Box(jnp.array([[-1.0]]), jnp.array([[2.0]]))
  for method in (crown, crown_ibp):
    bounds = method(fn)(box)
    np.testing.assert_allclose(bounds.upper, [[0.6]], rtol=1e-5)
    np.testing.assert_allclose(bounds.lower, [[-0.3]], rtol=1e-5)
  optimized = alpha_crown(fn, steps=30, unroll=1)(box)
  assert -0.3 + 1e-3 < float(optimized.lower[0, 0]) <= 1e-6
  assert float(optimized.lower[0, 0]) > -0.05
