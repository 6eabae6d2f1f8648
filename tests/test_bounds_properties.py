"""What theory says of the bound transforms, beyond soundness.

Exactness (a single affine layer: IBP over a box, CROWN over any l_p ball,
by hand), ε = 0 gives the forward pass, the tightness order IBP ≤ CROWN-IBP
≤ CROWN ≤ α-CROWN on the margins of ReLU networks, jit = no-jit, vmap and
grad compose (the IBP loss's gradient matches finite differences), and bad
input gets a clear error.
"""

import functools
import inspect
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cure_jax.bounds import (
  Box,
  L1Ball,
  L2Ball,
  LinfBall,
  LpBall,
  UnsupportedPrimitiveError,
  alpha_crown,
  crown,
  crown_ibp,
  ibp,
  margin_spec,
)
from cure_jax.objectives.base import robust_cross_entropy

METHODS = {
  "ibp": ibp,
  "crown_ibp": crown_ibp,
  "crown": crown,
  "alpha_crown": functools.partial(alpha_crown, steps=5),
}
DOMAIN = (0.0, 1.0)
NUM_CLASSES = 5


class Mlp(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(12)(x))
    x = nn.relu(nn.Dense(12)(x))
    return nn.Dense(NUM_CLASSES)(x)


class Cnn(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))
    x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


def _network(module, seed=0, shape=(3, 8, 8, 1)):
  keys = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.uniform(keys[0], shape)
  y = jax.random.randint(keys[1], shape[:1], 0, NUM_CLASSES)
  params = module.init(keys[2], x)
  return module.apply, params, x, y


# ---------------------------------------------------------------- exactness

W = jnp.array([[1.0, -2.0], [3.0, 4.0]])  # x @ W: column j is output j
B = jnp.array([0.5, -1.0])


def _affine(x):
  return x @ W + B


def test_ibp_of_an_affine_map_over_a_box_by_hand():
  box = Box(jnp.array([[0.5, 0.5]]), jnp.array([[1.5, 1.5]]))
  out = ibp(_affine)(box)
  # Centre (1, 1): W^T c + b = (4.5, 1); radius |W|^T (0.5, 0.5) = (2, 3).
  np.testing.assert_allclose(out.lower, [[2.5, -2.0]])
  np.testing.assert_allclose(out.upper, [[6.5, 4.0]])
  # Attained at corners: the bounds are exact, not just sound.
  upper_corner = jnp.where(W > 0, box.upper.T, box.lower.T)  # per output
  np.testing.assert_allclose(
    [_affine(upper_corner[:, j][None])[0, j] for j in range(2)], out.upper[0]
  )


# (p, dual norms of W's columns (1, 3) and (-2, 4), times eps = 0.5)
@pytest.mark.parametrize(
  "p, radius",
  [
    (math.inf, [0.5 * 4.0, 0.5 * 6.0]),
    (2.0, [0.5 * math.sqrt(10.0), 0.5 * math.sqrt(20.0)]),
    (1.0, [0.5 * 3.0, 0.5 * 4.0]),
  ],
)
@pytest.mark.parametrize("method", ["crown", "crown_ibp", "alpha_crown"])
def test_linear_methods_bound_an_affine_map_exactly_over_lp_balls(
  p, radius, method
):
  ball = LpBall(jnp.array([[1.0, 1.0]]), 0.5, p)
  out = METHODS[method](_affine)(ball)
  center = np.array([4.5, 1.0])
  np.testing.assert_allclose(out.lower[0], center - radius, rtol=1e-6)
  np.testing.assert_allclose(out.upper[0], center + radius, rtol=1e-6)


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_ibp_is_exact_through_the_first_affine_layer_of_an_lp_ball(p):
  # IBP bounds an l_p ball through the first layer by the dual norm.
  out = ibp(_affine)(LpBall(jnp.array([[1.0, 1.0]]), 0.5, p))
  exact = crown(_affine)(LpBall(jnp.array([[1.0, 1.0]]), 0.5, p))
  np.testing.assert_allclose(out.lower, exact.lower, rtol=1e-6)
  np.testing.assert_allclose(out.upper, exact.upper, rtol=1e-6)


# Every method over every ball; α-CROWN, which at ε = 0 optimizes no slope
# (every neuron is stable) and is slow to run eagerly, over the l∞ ball.
ZERO_RADIUS_CASES = [
  (method, make_set)
  for method in sorted(METHODS)
  for make_set in (LinfBall, L2Ball, L1Ball)
  if method != "alpha_crown" or make_set is LinfBall
]


@pytest.mark.parametrize("module", [Mlp(), Cnn()], ids=["mlp", "cnn"])
@pytest.mark.parametrize(
  "method, make_set",
  ZERO_RADIUS_CASES,
  ids=[f"{m}-{s.__name__}" for m, s in ZERO_RADIUS_CASES],
)
def test_zero_radius_gives_the_forward_pass(module, method, make_set):
  apply, params, x, y = _network(module)
  out = METHODS[method](apply)(params, make_set(x, 0.0, domain=DOMAIN))
  logits = apply(params, x)
  np.testing.assert_allclose(out.lower, logits, atol=1e-5)
  np.testing.assert_allclose(out.upper, logits, atol=1e-5)
  margins = METHODS[method](apply)(
    params, make_set(x, 0.0), spec=margin_spec(y, NUM_CLASSES)
  )
  expected = jnp.take_along_axis(logits, y[:, None], 1) - logits
  expected = expected[jnp.arange(NUM_CLASSES)[None] != y[:, None]].reshape(
    len(y), -1
  )
  np.testing.assert_allclose(margins.lower, expected, atol=1e-5)


# ----------------------------------------------------------------- ordering


@pytest.mark.parametrize("module", [Mlp(), Cnn()], ids=["mlp", "cnn"])
@pytest.mark.parametrize(
  "make_set, eps",
  [(LinfBall, 0.05), (L2Ball, 0.3), (L1Ball, 0.6)],
  ids=["linf", "l2", "l1"],
)
def test_tighter_methods_give_tighter_margin_lower_bounds(
  module, make_set, eps
):
  apply, params, x, y = _network(module, seed=1)
  spec = margin_spec(y, NUM_CLASSES)
  input_set = make_set(x, eps, domain=DOMAIN)
  # Jitted: one compilation for every method instead of one per operation
  # (XLA shares the passes the methods have in common).
  lower = jax.jit(
    lambda p, s, c: {
      name: method(apply)(p, s, spec=c).lower
      for name, method in METHODS.items()
    }
  )(params, input_set, spec)
  lower = {name: np.asarray(value) for name, value in lower.items()}
  slack = 1e-5 * (1 + np.abs(lower["ibp"]))
  assert np.all(lower["crown_ibp"] >= lower["ibp"] - slack)
  assert np.all(lower["crown"] >= lower["crown_ibp"] - slack)
  assert np.all(lower["alpha_crown"] >= lower["crown"] - slack)
  # And strictly tighter somewhere: the relaxations are doing work.
  assert np.any(lower["crown"] > lower["ibp"] + 1e-3)


@pytest.mark.parametrize("method", ["crown_ibp", "crown", "alpha_crown"])
def test_lower_bounds_and_groups_of_rows_give_the_bounds_of_one_pass(method):
  """bound="lower" (what certificates use) loses nothing and skips the upper
  rows; rows_per_pass splits the specification rows (here one per pass):
  each row is a separate linear bound, so the bounds are those of one pass,
  and α-CROWN's per-row slopes follow their rows."""
  apply, params, x, y = _network(Cnn(), seed=6)
  spec = margin_spec(y, NUM_CLASSES)
  input_set = LinfBall(x, 0.1, domain=DOMAIN)
  bounds = {
    (bound, rows): METHODS[method](apply, bound=bound, rows_per_pass=rows)(
      params, input_set, spec=spec
    )
    for bound in ("both", "lower")
    for rows in (None, 1)
  }
  one = bounds["both", None]
  assert np.all(np.isfinite(one.lower)) and np.all(np.isfinite(one.upper))
  for (bound, rows), out in bounds.items():
    what = f"bound={bound}, rows_per_pass={rows}"
    np.testing.assert_allclose(
      out.lower, one.lower, rtol=1e-5, atol=1e-6, err_msg=what
    )
    if bound == "both":
      np.testing.assert_allclose(
        out.upper, one.upper, rtol=1e-5, atol=1e-6, err_msg=what
      )
    else:
      assert np.all(np.isposinf(out.upper)), what


def test_row_groups_cover_the_rows_in_order():
  from cure_jax.bounds.backward import row_groups

  # 9 margin rows of 128 examples: one row (128 rows·examples) per pass.
  assert row_groups(9, 128) == [slice(i, i + 1) for i in range(9)]
  # 32 examples: four rows per pass, the last group shorter.
  assert row_groups(9, 32) == [slice(0, 4), slice(4, 8), slice(8, 9)]
  # Few examples: one pass; a cap on the passes widens the groups.
  assert row_groups(9, 8) == [slice(0, 9)]
  assert row_groups(20, 128, max_groups=4) == [
    slice(i, i + 5) for i in range(0, 20, 5)
  ]


def test_narrow_rows_get_larger_groups_on_a_cpu(monkeypatch):
  from cure_jax.bounds import backward, intermediate, transforms
  from cure_jax.bounds.interval import Interval

  monkeypatch.setattr(backward.jax, "default_backend", lambda: "cpu")
  wide = backward.MIN_PASS_BYTES // 64  # 64 such rows fill a pass
  assert backward.default_rows_per_pass(wide) == backward.ROWS_PER_PASS
  narrow = backward.MIN_PASS_BYTES // 1000
  assert backward.default_rows_per_pass(narrow) == 1000
  # The widest bounded value sets the row: 100 examples of 10×10×32.
  env = {
    0: Interval(jnp.zeros((100, 784)), jnp.ones((100, 784))),
    1: Interval(jnp.zeros((100, 10, 10, 32)), jnp.ones((100, 10, 10, 32))),
    2: jnp.zeros((5000,)),  # not a bound: ignored
  }
  assert intermediate.largest_value(env) == 3200
  groups = transforms._row_groups(jnp.zeros((9, 100, 10)), "auto", env)
  assert groups == [slice(0, 3), slice(3, 6), slice(6, 9)]  # 327 rows each
  monkeypatch.setattr(backward.jax, "default_backend", lambda: "gpu")
  assert transforms._row_groups(jnp.zeros((9, 100, 10)), "auto", env) is None


@pytest.mark.parametrize("rows_per_pass", [0, -3, 1.5, "fast"])
def test_a_bad_rows_per_pass_is_refused(rows_per_pass):
  with pytest.raises(ValueError, match="rows_per_pass"):
    crown_ibp(lambda x: x, rows_per_pass=rows_per_pass)


# ----------------------------------------------- jit, vmap and grad compose


@pytest.mark.parametrize("method", sorted(METHODS))
def test_jit_equals_no_jit(method):
  apply, params, x, y = _network(Cnn(), seed=2)
  spec = margin_spec(y, NUM_CLASSES)

  # α-CROWN with plain gradient steps: Adam's normalized steps turn the
  # round-off differences of near-zero gradients into different slopes.
  transform = (
    functools.partial(alpha_crown, steps=5, optimizer=optax.sgd(0.05))
    if method == "alpha_crown"
    else METHODS[method]
  )

  def bounds(params, x):
    return transform(apply)(params, L2Ball(x, 0.2, domain=DOMAIN), spec=spec)

  # Eagerly the intermediate passes take the unstable neurons' rows only;
  # under jit every neuron is a row (the same bounds).
  eager, jitted = bounds(params, x), jax.jit(bounds)(params, x)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_vmap_over_radii_equals_a_loop(method):
  apply, params, x, _ = _network(Mlp(), seed=3)
  radii = jnp.array([0.0, 0.01, 0.05])

  def upper(eps):
    return METHODS[method](apply)(params, LinfBall(x, eps)).upper

  # Both jitted: one compilation each instead of every operation's.
  stacked = jax.jit(jax.vmap(upper))(radii)
  one = jax.jit(upper)
  for i, eps in enumerate(radii):
    np.testing.assert_allclose(stacked[i], one(eps), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_set", [LinfBall, L2Ball], ids=["linf", "l2"])
def test_gradient_of_the_ibp_loss_matches_finite_differences(make_set):
  # In float64 so that a tiny step stays clear of the bounds' kinks (ReLU
  # states, the dual-norm/box intersection) and of round-off.
  with jax.enable_x64(True):
    apply, params, x, y = _network(Mlp(), seed=4, shape=(4, 3, 3, 1))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    x = x.astype(jnp.float64)
    spec = margin_spec(y, NUM_CLASSES)

    def loss(params):
      margins = ibp(apply)(params, make_set(x, 0.1, domain=DOMAIN), spec=spec)
      return robust_cross_entropy(margins.lower).mean()

    # Jitted: eagerly, every float64 operation of the loss and its gradient
    # would compile on its own.
    grads = jax.jit(jax.grad(loss))(params)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    direction = jax.tree.unflatten(
      treedef,
      [
        jax.random.normal(k, p.shape, jnp.float64) for p, k in zip(leaves, keys)
      ],
    )
    h = 1e-6
    shifted = lambda s: jax.tree.map(
      lambda p, d: p + s * h * d, params, direction
    )
    value = jax.jit(loss)
    numeric = (value(shifted(1.0)) - value(shifted(-1.0))) / (2 * h)
    analytic = sum(
      jnp.vdot(g, d)
      for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction))
    )
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5)
    assert abs(float(analytic)) > 1e-3  # a real, non-vanishing gradient


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("method", sorted(METHODS))
def test_unsupported_primitive_names_itself_and_the_source_line(method):
  def net(x):
    return jnp.sin(x @ jnp.ones((3, 2)))  # the offending line

  with pytest.raises(UnsupportedPrimitiveError) as error:
    METHODS[method](net)(LinfBall(jnp.zeros((2, 3)), 0.1))
  message = str(error.value)
  line = inspect.getsourcelines(net)[1] + 1  # the jnp.sin line
  assert "'sin'" in message
  assert f"test_bounds_properties.py:{line}:" in message and "net" in message


def test_a_set_of_the_wrong_shape_is_explained():
  with pytest.raises(ValueError, match="does each set have the shape"):
    ibp(_affine)(LinfBall(jnp.zeros((1, 3)), 0.1))


@pytest.mark.parametrize("make_set", [LinfBall, L2Ball, L1Ball])
def test_a_negative_radius_is_refused(make_set):
  with pytest.raises(ValueError, match="non-negative"):
    make_set(jnp.zeros((2, 3)), -0.1)


def test_a_radius_that_fits_no_axis_is_refused():
  with pytest.raises(ValueError, match="does not fit a center"):
    L2Ball(jnp.zeros((2, 3)), jnp.ones((3,)))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_split_pieces_are_bounded_exactly(method):
  """jnp.split (several outputs), one piece used, or both recombined."""
  x = jnp.arange(8.0).reshape(2, 4)
  first_half = lambda v: jnp.split(v, 2, axis=-1)[0]
  box = METHODS[method](first_half)(LinfBall(x, 0.1))
  np.testing.assert_allclose(box.lower, x[:, :2] - 0.1, rtol=1e-6)
  np.testing.assert_allclose(box.upper, x[:, :2] + 0.1, rtol=1e-6)

  # a - b of the two halves: exact under the linear methods only (IBP adds
  # the radii of a and b, which CROWN sees are the same inputs' halves).
  def difference(v):
    a, b = jnp.split(v, 2, axis=-1)
    return (a - b) + (v[:, :2] - a)  # = v[:, :2] - b, a reused twice

  box = METHODS[method](difference)(LinfBall(x, 0.1))
  expected = x[:, :2] - x[:, 2:]
  if method != "ibp":
    np.testing.assert_allclose(box.lower, expected - 0.2, rtol=1e-5)
    np.testing.assert_allclose(box.upper, expected + 0.2, rtol=1e-5)
  assert np.all(box.lower <= expected - 0.2 + 1e-6)


def test_a_multi_output_primitive_without_a_rule_is_named():
  def eigen_values(v):
    return jnp.linalg.eigh(v[:, :, None] * v[:, None, :])[0]

  with pytest.raises(UnsupportedPrimitiveError, match="'eigh'"):
    crown(eigen_values)(LinfBall(jnp.ones((1, 3)), 0.1))


def test_a_comparison_selects_its_case_where_certain_and_covers_both_elsewhere():
  """jnp.where(x > 1, 2x, -x) over x ∈ [2, 3], [-1, 0] and [0, 2], by hand."""
  piecewise = lambda x: jnp.where(x > 1.0, 2.0 * x, -x)
  box = Box(jnp.array([[2.0, -1.0, 0.0]]), jnp.array([[3.0, 0.0, 2.0]]))
  for method in (ibp, crown_ibp, crown):
    bounds = method(piecewise)(box)
    # [4, 6]; [0, 1]; the hull of 2x on [0, 2] and -x on [0, 2]: [-2, 4].
    np.testing.assert_allclose(bounds.lower, [[4.0, 0.0, -2.0]], rtol=1e-6)
    np.testing.assert_allclose(bounds.upper, [[6.0, 1.0, 4.0]], rtol=1e-6)


def test_a_selector_that_is_not_a_comparison_is_refused():
  def three_way(x):
    which = jnp.clip(x, 0, 2).astype(jnp.int32)
    return jax.lax.select_n(which, x, 2 * x, 3 * x)

  with pytest.raises(UnsupportedPrimitiveError):
    ibp(three_way)(LinfBall(jnp.ones((1, 3)), 0.1))


def test_alpha_crown_optimizes_the_slopes_of_min_units_too():
  """Units capped from above, min(x, 1) = 1 - relu(1 - x), and no max: only
  if α-CROWN optimizes the slopes of min can it beat CROWN-IBP; it must, and
  never be looser."""

  def capped_net(params, x):
    hidden = jnp.minimum(x @ params["w1"], 1.0)
    hidden = jnp.minimum(hidden @ params["w2"], 1.0)
    return hidden @ params["w3"]

  keys = jax.random.split(jax.random.key(3), 4)
  params = {
    "w1": jax.random.normal(keys[0], (6, 16)),
    "w2": 0.5 * jax.random.normal(keys[1], (16, 16)),
    "w3": jax.random.normal(keys[2], (16, NUM_CLASSES)),
  }
  x = jax.random.uniform(keys[3], (3, 6))
  spec = margin_spec(jnp.arange(3) % NUM_CLASSES, NUM_CLASSES)
  ball = LinfBall(x, 0.15)
  reference = crown_ibp(capped_net)(params, ball, spec=spec).lower
  optimized = alpha_crown(capped_net, steps=20, intermediate="ibp")(
    params, ball, spec=spec
  ).lower
  assert np.all(optimized >= reference - 1e-5)
  assert np.any(optimized > reference + 1e-3)
