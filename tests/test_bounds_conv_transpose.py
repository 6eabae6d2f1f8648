"""conv_transpose.pullback: Lᵀc of a convolution, by each statement.

Every case is compared with JAX's own transpose of the convolution
(`jax.linear_transpose`), values and gradients, on geometries that take
each of the three paths (`statement`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.bounds import conv_transpose

CONV = jax.lax.conv_general_dilated_p

# (height, width, in features, kernel rows, kernel columns, out features,
#  strides, rhs dilation, padding)
GEOMETRIES = [
  (13, 13, 16, 4, 4, 32, (1, 1), (1, 1), ((0, 0), (0, 0))),  # small CNN conv2
  (28, 28, 1, 4, 4, 16, (2, 2), (1, 1), ((0, 0), (0, 0))),  # small CNN conv1
  (14, 14, 8, 3, 3, 8, (1, 1), (1, 1), ((1, 1), (1, 1))),  # CNN7, SAME
  (28, 28, 4, 3, 3, 8, (2, 2), (1, 1), ((1, 1), (1, 1))),  # CNN7, strided
  (11, 9, 3, 3, 2, 5, (3, 1), (1, 2), ((2, 0), (1, 3))),
  (10, 12, 2, 2, 3, 3, (1, 2), (2, 1), ((0, 3), (2, 0))),
  (9, 9, 3, 4, 4, 2, (2, 3), (2, 1), ((3, 1), (0, 0))),
  (28, 28, 1, 3, 3, 18, (1, 1), (1, 1), ((1, 1), (1, 1))),  # CNN7 conv1
  (12, 11, 2, 3, 2, 24, (2, 3), (2, 1), ((0, 2), (3, 0))),  # taps, odd
  (8, 7, 2, 1, 3, 4, (1, 1), (1, 1), ((0, 0), (1, 1))),  # one kernel row
]


def _params(x_shape, kernel, strides, dilation, padding, layout="NHWC"):
  lhs = layout
  numbers = jax.lax.conv_dimension_numbers(
    x_shape, kernel.shape, (lhs, "HWIO", lhs)
  )
  return dict(
    window_strides=strides,
    padding=padding,
    lhs_dilation=(1, 1),
    rhs_dilation=dilation,
    dimension_numbers=numbers,
    feature_group_count=1,
    batch_group_count=1,
    precision=jax.lax.Precision.HIGHEST,
    preferred_element_type=None,
    out_sharding=None,
  )


def _case(geometry, rows=3, seed=0):
  h, w, cin, kh, kw, cout, strides, dilation, padding = geometry
  rng = np.random.default_rng(seed)
  kernel = jnp.asarray(rng.normal(size=(kh, kw, cin, cout)), jnp.float32)
  x_shape = (1, h, w, cin)
  params = _params(x_shape, kernel, strides, dilation, padding)
  y = jax.eval_shape(
    lambda x: CONV.bind(x, kernel, **params),
    jax.ShapeDtypeStruct(x_shape, jnp.float32),
  )
  c = jnp.asarray(rng.normal(size=(rows,) + y.shape[1:]), jnp.float32)
  return kernel, x_shape, params, c


def _assert_close(got, expected):
  """Equal to float32 rounding of sums of many terms (relative to the
  largest entry)."""
  scale = float(jnp.max(jnp.abs(expected)))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * scale)


def _reference(params, kernel, x_shape, c):
  """JAX's transpose of the convolution."""
  shape = (c.shape[0],) + x_shape[1:]
  (pulled,) = jax.linear_transpose(
    lambda x: CONV.bind(x, kernel, **params),
    jax.ShapeDtypeStruct(shape, jnp.float32),
  )(c)
  return pulled


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_pullback_is_the_transpose(geometry):
  kernel, x_shape, params, c = _case(geometry)
  pull = conv_transpose.pullback(CONV, params, kernel, x_shape, jnp.float32)
  expected = _reference(params, kernel, x_shape, c)
  _assert_close(pull(c), expected)
  _assert_close(jax.jit(pull)(c), expected)


@pytest.mark.parametrize("geometry", GEOMETRIES[:-1])
def test_rows_statement_is_the_transpose_where_it_is_not_chosen_too(
  geometry,
):
  kernel, x_shape, params, c = _case(geometry, seed=1)
  shape = (c.shape[0],) + x_shape[1:]
  rows = conv_transpose._transposed_by_rows(
    CONV, params, c, kernel, shape, jnp.float32
  )
  _assert_close(rows, _reference(params, kernel, x_shape, c))


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_taps_statement_is_the_transpose_where_it_is_not_chosen_too(
  geometry,
):
  kernel, x_shape, params, c = _case(geometry, seed=4)
  shape = (c.shape[0],) + x_shape[1:]
  taps = conv_transpose._transposed_by_taps(params, c, kernel, shape)
  _assert_close(taps, _reference(params, kernel, x_shape, c))
  jitted = jax.jit(
    lambda c, k: conv_transpose._transposed_by_taps(params, c, k, shape)
  )
  _assert_close(jitted(c, kernel), _reference(params, kernel, x_shape, c))


def test_each_statement_is_chosen_where_it_pays():
  def chosen(geometry):
    kernel, x_shape, params, c = _case(geometry)
    return conv_transpose.statement(params, kernel.shape, x_shape, c.shape)

  # 2·C_in·kh·kw <= C_out: the taps' columns are at most half of c.
  assert chosen(GEOMETRIES[7]) == "taps"  # CNN7-like conv1: 18 <= 18
  assert chosen(GEOMETRIES[8]) == "taps"  # 24 <= 24
  assert chosen(GEOMETRIES[1]) == "rows"  # small CNN conv1: 32 > 16
  assert chosen(GEOMETRIES[0]) == "rows"  # VALID, 256 taps > 32
  assert chosen(GEOMETRIES[2]) == "jax"  # SAME
  assert chosen(GEOMETRIES[3]) == "jax"
  assert chosen(GEOMETRIES[-1]) == "jax"  # a single kernel row


def test_rows_statement_is_chosen_where_the_height_shrinks():
  def chosen(geometry, layout="NHWC"):
    kernel, x_shape, params, c = _case(geometry)
    if layout != "NHWC":
      params = _params(x_shape, kernel, *geometry[6:], layout=layout)
    return conv_transpose._rows_split(params, kernel.shape, x_shape, c.shape)

  assert chosen(GEOMETRIES[0]) and chosen(GEOMETRIES[1])  # VALID
  assert not chosen(GEOMETRIES[2]) and not chosen(GEOMETRIES[3])  # SAME
  assert not chosen(GEOMETRIES[-1])  # a single kernel row
  assert not chosen(GEOMETRIES[0], layout="NCHW")


@pytest.mark.parametrize(
  "geometry", [GEOMETRIES[0], GEOMETRIES[4], GEOMETRIES[8]]
)
def test_gradients_match_the_transpose(geometry):
  kernel, x_shape, params, c = _case(geometry, rows=2, seed=2)
  weights = jax.random.normal(jax.random.key(3), (c.shape[0],) + x_shape[1:])

  def ours(c, kernel):
    pull = conv_transpose.pullback(CONV, params, kernel, x_shape, jnp.float32)
    return jnp.sum(weights * pull(c) ** 2)

  def theirs(c, kernel):
    return jnp.sum(weights * _reference(params, kernel, x_shape, c) ** 2)

  got = jax.grad(ours, argnums=(0, 1))(c, kernel)
  expected = jax.grad(theirs, argnums=(0, 1))(c, kernel)
  for g, e in zip(got, expected):
    _assert_close(g, e)
