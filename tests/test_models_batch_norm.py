"""Tests for cure_jax.models.batch_norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.models.batch_norm import BatchNorm, batch_moments, normalize

MUTABLE = ["batch_stats", "batch_moments"]


RNG = np.random.default_rng(0)


def _normal(*shape):
  return jnp.asarray(RNG.standard_normal(shape), jnp.float32)


def _init(x, train=False):
  return BatchNorm().init(jax.random.key(0), x, train=train)


def _random_params(variables):
  """Non-trivial scale and bias, so that tests see them act."""
  shape = variables["params"]["scale"].shape
  return {"scale": 1.0 + 0.5 * _normal(*shape), "bias": _normal(*shape)}


def test_init_holds_params_and_unit_running_stats_only():
  x = jnp.ones((4, 3))
  for train in (False, True):
    variables = _init(x, train)
    assert set(variables) == {"params", "batch_stats"}
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], 0.0)
    np.testing.assert_array_equal(variables["batch_stats"]["var"], 1.0)
    np.testing.assert_array_equal(variables["params"]["scale"], 1.0)
    np.testing.assert_array_equal(variables["params"]["bias"], 0.0)


def test_batch_moments_are_per_channel_biased_statistics():
  x = _normal(5, 4, 3, 2) * 3.0 + 1.0
  mean, var = batch_moments(x)
  x_np = np.asarray(x).reshape(-1, 2)
  np.testing.assert_allclose(mean, x_np.mean(0), rtol=1e-5)
  np.testing.assert_allclose(var, x_np.var(0, ddof=0), rtol=1e-5)


def test_train_mode_normalizes_and_records_the_batch_moments():
  x = _normal(8, 5, 5, 3) * 2.0 - 1.0
  variables = _init(x)
  y, state = BatchNorm().apply(variables, x, train=True, mutable=MUTABLE)
  x_np = np.asarray(x).reshape(-1, 3)
  y_np = np.asarray(y).reshape(-1, 3)
  np.testing.assert_allclose(y_np.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(y_np.var(0), 1.0, rtol=1e-3)  # var/(var + 1e-5)
  moments = state["batch_moments"]
  assert jax.tree.structure(moments) == jax.tree.structure(state["batch_stats"])
  np.testing.assert_allclose(moments["mean"], x_np.mean(0), rtol=1e-5)
  np.testing.assert_allclose(moments["var"], x_np.var(0), rtol=1e-5)


def test_running_stats_follow_pytorch_momentum_and_unbiased_variance():
  # One channel, values 1 and 3: mean 2, biased var 1, unbiased var 2.
  x = jnp.array([[1.0], [3.0]])
  _, state = BatchNorm().apply(_init(x), x, train=True, mutable=MUTABLE)
  # r ← 0.9 r + 0.1 batch from (mean 0, var 1).
  np.testing.assert_allclose(state["batch_stats"]["mean"], [0.2], rtol=1e-6)
  np.testing.assert_allclose(state["batch_stats"]["var"], [1.1], rtol=1e-6)
  np.testing.assert_allclose(state["batch_moments"]["var"], [1.0], rtol=1e-6)


def test_eval_with_batch_moments_reproduces_train_mode_exactly():
  x = jnp.asarray(RNG.uniform(size=(6, 4, 4, 3)), jnp.float32)
  variables = _init(x)
  params = _random_params(variables)
  y_train, state = BatchNorm().apply(
    {"params": params, "batch_stats": variables["batch_stats"]},
    x,
    train=True,
    mutable=MUTABLE,
  )
  y_eval = BatchNorm().apply(
    {"params": params, "batch_stats": state["batch_moments"]}, x, train=False
  )
  np.testing.assert_array_equal(y_eval, y_train)


def test_eval_mode_is_the_documented_per_channel_affine_map():
  x = _normal(3, 2, 2, 4)
  variables = _init(x)
  params = _random_params(variables)
  stats = {
    "mean": jnp.array([0.5, -1.0, 2.0, 0.0]),
    "var": jnp.array([4.0, 0.25, 1.0, 9.0]),
  }
  y = BatchNorm().apply(
    {"params": params, "batch_stats": stats}, x, train=False
  )
  expected = (np.asarray(x) - stats["mean"]) * (
    params["scale"] / np.sqrt(stats["var"] + 1e-5)
  ) + params["bias"]
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_eval_mode_is_affine_and_acts_per_sample():
  x1, x2 = _normal(4, 3), _normal(4, 3)
  variables = _init(x1)
  variables = {
    "params": _random_params(variables),
    "batch_stats": {
      "mean": jnp.array([1.0, 2.0, 3.0]),
      "var": jnp.array([2.0, 3.0, 4.0]),
    },
  }
  f = lambda x: BatchNorm().apply(variables, x, train=False)
  a = 0.3
  np.testing.assert_allclose(
    f(a * x1 + (1 - a) * x2), a * f(x1) + (1 - a) * f(x2), rtol=1e-5, atol=1e-6
  )
  # Changing other samples of the batch does not change sample 0.
  np.testing.assert_array_equal(f(x1)[0], f(x1.at[1:].set(x2[1:]))[0])


def test_train_mode_without_mutable_collections_changes_nothing():
  x = _normal(4, 3)
  variables = _init(x)
  y = BatchNorm().apply(variables, x, train=True)
  y_mut, state = BatchNorm().apply(
    variables, x, train=True, mutable=["batch_stats"]
  )
  np.testing.assert_array_equal(y, y_mut)
  assert set(state) == {"batch_stats"}  # Moments only when asked for.


def test_jit_matches_eager():
  x = _normal(4, 2, 2, 3)
  variables = _init(x)
  apply = lambda v, x: BatchNorm().apply(v, x, train=True, mutable=MUTABLE)
  eager = apply(variables, x)
  jitted = jax.jit(apply)(variables, x)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager, jitted
  )


def test_normalize_matches_formula():
  x = jnp.array([[2.0, 4.0]])
  y = normalize(
    x,
    jnp.array([1.0, 2.0]),
    jnp.array([3.0, 0.0]),
    jnp.array([2.0, 1.0]),
    jnp.array([0.5, -1.0]),
    epsilon=1.0,
  )
  # (2 − 1)·2/√4 + 0.5 = 1.5 ;  (4 − 2)·1/√1 − 1 = 1.
  np.testing.assert_allclose(y, [[1.5, 1.0]], rtol=1e-6)


@pytest.mark.parametrize(
  "shape, match",
  [
    ((1, 3), "more than one value per channel"),
    ((1, 1, 1, 5), "more than one value per channel"),
  ],
)
def test_train_mode_rejects_single_value_per_channel(shape, match):
  x = jnp.ones(shape)
  with pytest.raises(ValueError, match=match):
    BatchNorm().apply(_init(x), x, train=True, mutable=MUTABLE)


def test_rejects_unbatched_input():
  with pytest.raises(ValueError, match="batch"):
    BatchNorm().init(jax.random.key(0), jnp.ones((3,)), train=False)
