"""Products of bounded values and integer powers (SiLU, GELU, gates, x²).

CROWN relaxes z = x·y by McCormick's planes and x^n by curvature (odd n:
reverse-S, even n: convex). The planes and lines must enclose the function
on the whole box — checked on dense grids, on boxes of every sign pattern —
and the transforms are checked by hand on one product, on x·x and on
square. Whole networks (SiLU, GELU, a gate) are checked by sampling and
attack in `test_bounds_soundness.py`.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.bounds import Box, alpha_crown, crown, crown_ibp, ibp, relaxations
from cure_jax.bounds.graph import Eqn
from cure_jax.bounds.ibp_rules import RULES as IBP_RULES
from cure_jax.bounds.interval import Interval
from cure_jax.bounds.linear_rules import product

# (lx, ux) and (ly, uy) of every sign pattern, wide and narrow.
SIDES = [
  (-3.0, -1.0),
  (-2.0, 0.5),
  (-0.5, 3.0),
  (1.0, 4.0),
  (-1.0, 1.0),
  (0.0, 2.0),
  (0.7, 0.8),
]
BOXES = list(itertools.product(SIDES, SIDES))


def _mul_eqn():
  return Eqn(jax.lax.mul_p, (0, 1), (2,), {}, None)


def _planes(sign, mix=None):
  """The plane `product` gives for coefficient ``sign`` (+1: a lower bound of
  x·y, −1: a lower bound of −x·y) and α-CROWN's plane mix ``mix`` (None:
  CROWN's), on every box: (a_x, a_y, bias)."""
  lx, ux, ly, uy = (
    np.array([box[i][j] for box in BOXES], np.float32)
    for i in (0, 1)
    for j in (0, 1)
  )
  x, y = Interval(lx[None], ux[None]), Interval(ly[None], uy[None])
  # One example holding every box as a feature; the bias sums over
  # features, so each box's own plane comes from a one-hot coefficient.
  planes = []
  for k in range(len(BOXES)):
    one_hot = np.zeros((1, 1, len(BOXES)), np.float32)
    one_hot[..., k] = sign
    alpha = None if mix is None else jnp.full(one_hot.shape, mix)
    pulled, bias = product(_mul_eqn(), [x, y], jnp.asarray(one_hot), alpha)
    planes.append(
      (float(pulled[0][0, 0, k]), float(pulled[1][0, 0, k]), float(bias[0, 0]))
    )
  return planes


@pytest.mark.parametrize("mix", [None, 0.0, 0.3, 1.0])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["lower", "upper"])
def test_mccormick_planes_enclose_the_product_on_the_whole_box(sign, mix):
  t = np.linspace(0.0, 1.0, 41)
  for ((lx, ux), (ly, uy)), (a_x, a_y, bias) in zip(BOXES, _planes(sign, mix)):
    x, y = np.meshgrid(lx + t * (ux - lx), ly + t * (uy - ly))
    # sign·(x y) >= a_x x + a_y y + bias everywhere on the box.
    slack = sign * x * y - (a_x * x + a_y * y + bias)
    assert slack.min() >= -1e-5, ((lx, ux), (ly, uy), sign)


def test_product_of_two_inputs_by_hand():
  """x ∈ [-1, 2], y ∈ [1, 3]: the lower plane y_l x + x_l y − x_l y_l =
  x − y + 1 is least, −3, at (−1, 3): exact. The upper plane
  y_u x + x_l y − x_l y_u = 3x − y + 3 reaches 8 at (2, 1), looser than the
  corners' 6, which CROWN keeps (it never returns less than CROWN-IBP and
  IBP)."""
  x = Interval(jnp.array([[-1.0]]), jnp.array([[2.0]]))
  y = Interval(jnp.array([[1.0]]), jnp.array([[3.0]]))
  (a_x, a_y), bias = (lambda p, b: ((p[0], p[1]), b))(
    *product(_mul_eqn(), [x, y], jnp.ones((1, 1, 1)))
  )
  np.testing.assert_allclose([a_x.item(), a_y.item(), bias.item()], [1, -1, 1])
  (a_x, a_y), bias = (lambda p, b: ((p[0], p[1]), b))(
    *product(_mul_eqn(), [x, y], -jnp.ones((1, 1, 1)))
  )
  np.testing.assert_allclose([a_x.item(), a_y.item(), bias.item()], [-3, 1, -3])

  fn = lambda v: v[:, :1] * v[:, 1:]
  box = Box(jnp.array([[-1.0, 1.0]]), jnp.array([[2.0, 3.0]]))
  np.testing.assert_allclose(crown(fn)(box).lower, [[-3.0]], atol=1e-6)
  np.testing.assert_allclose(crown(fn)(box).upper, [[6.0]], atol=1e-6)


def test_a_value_times_itself_and_its_square():
  """On [−1, 2]: x·x by McCormick has lower plane −2x − 1 (least −5), which
  CROWN-IBP raises to IBP's −2; square's tangent at 1/2, x − 1/4, is least
  −5/4 at −1, and IBP's [0, 4] is tighter still."""
  box = Box(jnp.array([[-1.0]]), jnp.array([[2.0]]))
  np.testing.assert_allclose(ibp(lambda v: v * v)(box).lower, [[-2.0]])
  np.testing.assert_allclose(
    crown_ibp(lambda v: v * v)(box).lower, [[-2.0]], atol=1e-6
  )
  np.testing.assert_allclose(ibp(jnp.square)(box).lower, [[0.0]])
  np.testing.assert_allclose(ibp(jnp.square)(box).upper, [[4.0]])
  # Away from 0 the lines beat IBP: on [1, 3] the tangent at 2 gives
  # x² − 4x >= (4x − 4) − 4x = −4, its true minimum (at 2); IBP gives
  # [1, 9] − [4, 12], from −11.
  narrow = Box(jnp.array([[1.0]]), jnp.array([[3.0]]))
  fn = lambda v: jnp.square(v) - 4.0 * v
  np.testing.assert_allclose(crown(fn)(narrow).lower, [[-4.0]], atol=1e-5)
  np.testing.assert_allclose(ibp(fn)(narrow).lower, [[-11.0]])


POWERS = {
  "identity": (lambda v: v, "integer_pow", {"y": 1}),
  "cube": (lambda v: v**3, "integer_pow", {"y": 3}),
  "fifth": (lambda v: v**5, "integer_pow", {"y": 5}),
  "fourth": (lambda v: v**4, "integer_pow", {"y": 4}),
  "square": (jnp.square, "square", {}),
}
INTERVALS = [
  (-3.0, -1.0),
  (-2.0, 0.5),
  (-1.5, 0.0),
  (-0.5, 3.0),
  (-1.0, 1.0),
  (0.0, 2.0),
  (0.7, 0.8),
  (1.0, 2.0),
  (-1e-3, 2e-3),
  (1.0, 1.0),
]


@pytest.mark.parametrize("name", sorted(POWERS))
def test_power_lines_enclose_the_power_on_the_whole_interval(name):
  fn, primitive, params = POWERS[name]
  lower, upper = (np.array(v, np.float32) for v in zip(*INTERVALS))
  derivative = lambda v: jax.jvp(fn, (v,), (jnp.ones_like(v),))[1]
  eqn = Eqn(getattr(jax.lax, f"{primitive}_p"), (0,), (1,), params, None)
  (fallback,) = IBP_RULES[primitive](
    eqn, [Interval(jnp.asarray(lower), jnp.asarray(upper))]
  )
  relax = relaxations.smooth_relaxation(
    fn,
    derivative,
    relaxations.curvature(primitive, params),
    jnp.asarray(lower),
    jnp.asarray(upper),
    fallback=(fallback.lower, fallback.upper),
  )
  t = np.linspace(0.0, 1.0, 2001)[:, None]
  x = lower + t * (upper - lower)
  f = np.asarray(fn(jnp.asarray(x, jnp.float32)), np.float64)
  below = np.asarray(relax.lower_slope) * x + np.asarray(relax.lower_offset)
  above = np.asarray(relax.upper_slope) * x + np.asarray(relax.upper_offset)
  tolerance = 1e-5 * (1.0 + np.abs(f))
  assert np.all(below <= f + tolerance), name
  assert np.all(above >= f - tolerance), name


def test_curvature_of_powers():
  assert relaxations.curvature("integer_pow", {"y": 3}) == "reverse_s"
  assert relaxations.curvature("integer_pow", {"y": 6}) == "convex"
  assert relaxations.curvature("square", {}) == "convex"
  assert relaxations.curvature("integer_pow", {"y": 1}) == "convex"  # linear
  with pytest.raises(ValueError, match="negative exponent"):
    relaxations.curvature("integer_pow", {"y": -1})


def test_alpha_crown_mixes_the_planes_of_a_product():
  """f = x·y − x − y on [−1, 1]², least −1 (at (1, 1), (1, −1), (−1, 1)).
  CROWN's plane P1 = −x − y − 1 gives f >= −2x − 2y − 1, least −5 (IBP's
  −3 is kept); the other plane P2 = x + y − 1 gives f >= −1, exact. α-CROWN
  starts at P1 and must move the mix towards P2."""
  fn = lambda v: v[:, :1] * v[:, 1:] - v[:, :1] - v[:, 1:]
  box = Box(jnp.array([[-1.0, -1.0]]), jnp.array([[1.0, 1.0]]))
  assert float(crown(fn)(box).lower[0, 0]) <= -3.0 + 1e-6
  optimized = alpha_crown(fn, steps=30)(box).lower
  assert float(optimized[0, 0]) > -2.0
  assert float(optimized[0, 0]) <= -1.0 + 1e-5  # sound


def test_silu_network_crown_is_tighter_than_ibp_and_differentiable():
  w1 = jax.random.normal(jax.random.key(0), (6, 8))
  w2 = jax.random.normal(jax.random.key(1), (8, 3))
  fn = lambda w, v: jax.nn.silu(v @ w) @ w2
  box = lambda v: Box(v - 0.05, v + 0.05)
  x = jax.random.uniform(jax.random.key(2), (4, 6))
  # Jitted: one compilation each, where eagerly every operation compiles.
  tight = jax.jit(lambda w, v: crown(fn)(w, box(v)))(w1, x)
  loose = ibp(fn)(w1, box(x))
  assert np.all(tight.lower >= loose.lower - 1e-5)
  assert np.any(tight.lower > loose.lower + 1e-3)
  grad = jax.jit(jax.grad(lambda w: crown_ibp(fn)(w, box(x)).lower.sum()))(w1)
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)
