"""Tests for cure_jax/objectives/registry.py: how the clean pass enters the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.models import ConvNet
from cure_jax.objectives.base import Batch, StepContext
from cure_jax.objectives.registry import make_objective
from cure_jax.settings import load_config

MODEL = ConvNet(num_classes=10, conv_widths=(4, 8), conv_strides=(1, 2),
                dense_widths=(16,), batch_norm=True)


def _config(**overrides):
  config = load_config("configs/mnist.py:cpu=True,method=ibp")
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope="module")
def setup():
  key_x, key_y, key_init = jax.random.split(jax.random.key(0), 3)
  batch = Batch(jax.random.uniform(key_x, (8, 12, 12, 1)),
                jax.random.randint(key_y, (8,), 0, 10))
  variables = MODEL.init(key_init, batch.images, train=False)

  def ctx(kappa):
    return StepContext(rng=jax.random.key(3), eps_linf=jnp.float32(0.05),
                       eps_l2=jnp.float32(0.3), kappa=jnp.float32(kappa),
                       reg_scale=jnp.float32(0.0))
  return variables["params"], variables["batch_stats"], batch, ctx


def _objective(config, **kwargs):
  """The objective, jitted (op-by-op dispatch of bound passes is slow)."""
  return jax.jit(make_objective(config, MODEL, **kwargs))


def _grads(objective, params, stats, batch, ctx):
  return jax.jit(jax.grad(lambda p: objective(p, stats, batch, ctx)[0]))(params)


def _assert_trees_close(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


def test_kappa_is_zero_gives_the_kappa_weighted_loss_at_kappa_zero(setup):
  params, stats, batch, ctx = setup
  config = _config(warmup_reg=False)
  mixed = _objective(config)
  known = _objective(config, kappa_is_zero=True)
  loss_mixed, (_, metrics_mixed) = mixed(params, stats, batch, ctx(0.0))
  loss_known, (_, metrics_known) = known(params, stats, batch, ctx(0.0))
  np.testing.assert_allclose(loss_known, loss_mixed, rtol=1e-6)
  np.testing.assert_allclose(metrics_known["clean_loss"],
                             metrics_mixed["clean_loss"], rtol=1e-6)
  _assert_trees_close(_grads(known, params, stats, batch, ctx(0.0)),
                      _grads(mixed, params, stats, batch, ctx(0.0)),
                      rtol=1e-4, atol=1e-5)  # two compiled programs: float order


def test_constant_moments_change_the_gradient_only_through_the_moments(setup):
  params, stats, batch, ctx = setup
  through = _objective(_config(warmup_reg=False), kappa_is_zero=True)
  constant = _objective(_config(warmup_reg=False, bn_moment_gradients=False),
                        kappa_is_zero=True)
  # Same loss value: the moments are the same numbers, only their gradient goes.
  np.testing.assert_allclose(constant(params, stats, batch, ctx(0.0))[0],
                             through(params, stats, batch, ctx(0.0))[0],
                             rtol=1e-6)
  g_through = _grads(through, params, stats, batch, ctx(0.0))
  g_constant = _grads(constant, params, stats, batch, ctx(0.0))
  # The last dense layer sits after every BatchNorm: its gradient is the same.
  _assert_trees_close(g_constant["logits"], g_through["logits"], rtol=1e-5,
                      atol=1e-7)
  # The first convolution feeds the first BatchNorm's moments: it differs.
  difference = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                            g_constant["conv_0"], g_through["conv_0"])
  assert max(jax.tree.leaves(difference)) > 1e-6


def _count_convolutions(jaxpr) -> int:
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == "conv_general_dilated"
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", None)
      if inner is not None and hasattr(inner, "eqns"):
        count += _count_convolutions(inner)
  return count


def test_constant_moments_leave_no_backward_pass_through_the_clean_pass(setup):
  """With κ = 0 and constant moments the clean pass is forward only.

  The gradient's jaxpr then lacks the clean pass's backward convolutions:
  the weight gradient of the first convolution (its input is data) and the
  input and weight gradients of the second — 3 fewer convolutions.
  """
  params, stats, batch, ctx = setup
  def gradient_jaxpr(**overrides):
    objective = make_objective(_config(warmup_reg=False, **overrides), MODEL,
                               kappa_is_zero=True)
    return jax.make_jaxpr(
        lambda p: _grads(objective, p, stats, batch, ctx(0.0)))(params).jaxpr
  through = _count_convolutions(gradient_jaxpr())
  constant = _count_convolutions(gradient_jaxpr(bn_moment_gradients=False))
  assert through - constant == 3
