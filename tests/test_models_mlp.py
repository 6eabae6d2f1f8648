"""Tests for cure_jax.models.mlp."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.models.mlp import MLP

RNG = np.random.default_rng(0)


def _abstract_variables(model, x):
  return jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), x
  )


def test_shapes_and_layer_names():
  model = MLP(num_classes=7, hidden_widths=(32, 16))
  x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
  variables = _abstract_variables(model, x)
  shapes = jax.tree.map(lambda a: a.shape, variables["params"])
  assert shapes == {
    "dense_0": {"kernel": (784, 32), "bias": (32,)},
    "dense_1": {"kernel": (32, 16), "bias": (16,)},
    "logits": {"kernel": (16, 7), "bias": (7,)},
  }
  assert "batch_stats" not in variables
  out = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False), variables, x
  )
  assert out.shape == (3, 7)


def test_matches_hand_written_relu_network():
  model = MLP(num_classes=2, hidden_widths=(3,))
  x = jnp.asarray(RNG.uniform(size=(4, 2, 2, 1)), jnp.float32)
  w0, b0 = RNG.standard_normal((4, 3)), RNG.standard_normal(3)
  w1, b1 = RNG.standard_normal((3, 2)), RNG.standard_normal(2)
  params = {
    "dense_0": {"kernel": w0, "bias": b0},
    "logits": {"kernel": w1, "bias": b1},
  }
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  hidden = np.maximum(np.asarray(x).reshape(4, 4) @ w0 + b0, 0)
  np.testing.assert_allclose(
    model.apply({"params": params}, x, train=False),
    hidden @ w1 + b1,
    rtol=1e-5,
    atol=1e-5,
  )


def test_batch_norm_variant_has_stats_and_no_hidden_bias():
  model = MLP(hidden_widths=(8,), batch_norm=True)
  x = jax.ShapeDtypeStruct((2, 5), jnp.float32)
  variables = _abstract_variables(model, x)
  assert set(variables["params"]["dense_0"]) == {"kernel"}
  assert set(variables["batch_stats"]) == {"dense_0_bn"}


def test_normalization_applies_per_channel():
  model = MLP(num_classes=2, hidden_widths=(), mean=(0.5, 0.25), std=(0.5, 2.0))
  params = {"logits": {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}}
  out = model.apply({"params": params}, jnp.array([[1.0, 0.25]]), train=False)
  np.testing.assert_allclose(out, [[1.0, 0.0]])  # (1 − .5)/.5, (.25 − .25)/2


def test_rejects_unbatched_input():
  with pytest.raises(ValueError, match="batch"):
    _abstract_variables(MLP(), jax.ShapeDtypeStruct((784,), jnp.float32))
