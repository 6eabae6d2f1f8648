"""`bounds.jit`: jax.jit with XLA:CPU options for bound computations.

The bounds it compiles equal jax.jit's; on the CPU the option reaches the
compiler (a reduction of a product that XLA would hand to YNNPACK stays an
XLA fusion); a user's own XLA_FLAGS setting wins; jax.jit's API (static
arguments, lower, the decorator forms) is kept.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import bounds
from cure_jax.bounds import compiler_options


class _SmallConv(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    return nn.Dense(5)(x.reshape(x.shape[0], -1))


def _problem():
  module = _SmallConv()
  k_x, k_init = jax.random.split(jax.random.key(3))
  x = jax.random.uniform(k_x, (2, 9, 9, 1))
  variables = module.init(k_init, x)
  spec = bounds.margin_spec(jnp.array([1, 3]), 5)
  return module, variables, x, spec


def test_bounds_equal_those_of_jax_jit():
  module, variables, x, spec = _problem()
  method = bounds.crown(module.apply, bound="lower")

  def margins(variables, x):
    ball = bounds.LinfBall(x, 0.05, domain=(0.0, 1.0))
    return method(variables, ball, spec=spec).lower

  np.testing.assert_allclose(
    bounds.jit(margins)(variables, x),
    jax.jit(margins)(variables, x),
    rtol=1e-5,
    atol=1e-6,
  )


def _reduction_of_products(a, b):
  return jnp.sum(a * b - jnp.minimum(a, 0.0), axis=(1, 2))


def test_the_option_reaches_the_compiler_on_cpu():
  if jax.default_backend() != "cpu":
    pytest.skip("XLA:CPU option")
  options = compiler_options.bound_compiler_options()
  if not options:
    pytest.skip("this jaxlib does not accept the option, or XLA_FLAGS sets it")
  assert options == {compiler_options.OPTION: compiler_options.VALUE}
  a = jnp.ones((64, 32, 16))
  default = jax.jit(_reduction_of_products).lower(a, a).compile().as_text()
  ours = bounds.jit(_reduction_of_products).lower(a, a).compile().as_text()
  if "__ynn_fusion" not in default:
    pytest.skip("this jaxlib does not hand the reduction to YNNPACK anyway")
  assert "__ynn_fusion" not in ours


def test_a_users_xla_flags_setting_wins(monkeypatch):
  compiler_options.bound_compiler_options.cache_clear()
  try:
    monkeypatch.setenv(
      "XLA_FLAGS", f"--{compiler_options.OPTION}=LIBRARY_FUSION_TYPE_DOT"
    )
    assert compiler_options.bound_compiler_options() == {}
  finally:
    monkeypatch.undo()
    compiler_options.bound_compiler_options.cache_clear()


def test_jax_jits_api_is_kept():
  @functools.partial(bounds.jit, static_argnums=0)
  def scaled(factor, x):
    return factor * x

  x = jnp.arange(3.0)
  np.testing.assert_array_equal(scaled(2.0, x), 2.0 * x)
  compiled = scaled.lower(3.0, x).compile()
  np.testing.assert_array_equal(compiled(x), 3.0 * x)
  assert scaled._cache_size() == 1  # the rest of jax.jit's API
  assert scaled.__name__ == "scaled"

  @bounds.jit
  def doubled(x):
    return 2.0 * x

  np.testing.assert_array_equal(doubled(x), 2.0 * x)


def test_inside_another_transformation_it_is_a_nested_jit():
  @bounds.jit
  def squared(x):
    return x * x

  x = jnp.arange(3.0)
  np.testing.assert_array_equal(jax.jit(squared)(x), x * x)
  np.testing.assert_array_equal(jax.vmap(squared)(x), x * x)
  np.testing.assert_array_equal(jax.grad(lambda x: squared(x).sum())(x), 2 * x)


def test_explicit_compiler_options_are_added():
  # A caller's options go with (and over) ours.
  f = bounds.jit(jnp.sum, compiler_options={"xla_cpu_enable_fast_math": False})
  assert float(f(jnp.ones(4))) == 4.0
