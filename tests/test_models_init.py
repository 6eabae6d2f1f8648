"""Tests for cure_jax.models.init (IBP initialization)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.models import CNN7, MLP
from cure_jax.models.init import ibp_init, ibp_normal, ibp_std

RNG = np.random.default_rng(0)


def _numpy_params(model, shape):
  """Params of the model's structure: N(0, 1) kernels, biases 1, BN scale 3."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  abstract = jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), x
  )["params"]

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return RNG.standard_normal(leaf.shape)
    return np.full(leaf.shape, 3.0 if name == "scale" else 1.0)

  return jax.tree_util.tree_map_with_path(
    lambda p, l: jnp.asarray(draw(p, l), jnp.float32), abstract
  )


@pytest.fixture(scope="module")
def cnn_params():
  model = CNN7(conv_widths=(8, 8, 16, 16, 16), dense_widths=(64,))
  params = _numpy_params(model, (1, 16, 16, 3))
  return params, jax.jit(ibp_init)(params, jax.random.key(0))


def test_std_is_sqrt_two_pi_over_fan_in():
  assert ibp_std((100, 10)) == pytest.approx(math.sqrt(2 * math.pi) / 100)
  # Conv kernel [kh, kw, in, out]: fan-in 3·3·16 = 144.
  assert ibp_std((3, 3, 16, 32)) == pytest.approx(math.sqrt(2 * math.pi) / 144)


def test_hidden_kernels_have_the_ibp_std(cnn_params):
  _, params = cnn_params
  for name in ("conv_0", "conv_1", "conv_2", "conv_3", "conv_4", "dense_0"):
    kernel = np.asarray(params[name]["kernel"])
    fan_in = math.prod(kernel.shape[:-1])
    expected = math.sqrt(2 * math.pi) / fan_in
    # The sample std of n normals has relative std error ≈ 1/√(2n).
    tolerance = 4 / math.sqrt(2 * kernel.size)
    assert abs(kernel.std() / expected - 1) < tolerance, name
    assert abs(kernel.mean()) < 4 * expected / math.sqrt(kernel.size), name


def test_output_layer_and_batch_norm_are_untouched(cnn_params):
  before, after = cnn_params
  for name in after:
    if name == "logits" or name.endswith("_bn"):
      jax.tree.map(np.testing.assert_array_equal, after[name], before[name])


def test_hidden_biases_become_zero():
  model = MLP(hidden_widths=(32, 32))
  params = _numpy_params(model, (1, 20))
  new = ibp_init(params, jax.random.key(0))
  np.testing.assert_array_equal(new["dense_0"]["bias"], 0.0)
  np.testing.assert_array_equal(new["dense_1"]["bias"], 0.0)
  np.testing.assert_array_equal(new["logits"]["bias"], 1.0)
  np.testing.assert_array_equal(
    new["logits"]["kernel"], params["logits"]["kernel"]
  )


def test_expected_row_l1_norm_is_two():
  # E Σ_j |W_ij| = n σ √(2/π) = 2 for σ = √(2π)/n: the IBP radius of a layer
  # doubles in expectation, which the following ReLU roughly halves.
  kernel = ibp_normal()(jax.random.key(1), (1000, 500))
  row_l1 = np.abs(np.asarray(kernel)).sum(axis=0)
  assert row_l1.mean() == pytest.approx(2.0, abs=0.02)


def _ibp_radius_growth(params, widths, x_center, eps):
  """Per-layer growth of the mean IBP radius through a plain ReLU MLP."""
  lower, upper = x_center - eps, x_center + eps
  growth = []
  for i in range(len(widths)):
    layer = params[f"dense_{i}"]
    w, b = np.asarray(layer["kernel"]), np.asarray(layer["bias"])
    center = (upper + lower) / 2 @ w + b
    radius = (upper - lower) / 2 @ np.abs(w)
    growth.append(radius.mean() / ((upper - lower) / 2).mean())
    lower = np.maximum(center - radius, 0)
    upper = np.maximum(center + radius, 0)
  return np.array(growth)


def test_ibp_init_keeps_interval_bounds_from_exploding():
  widths = (256, 256, 256, 256)
  model = MLP(hidden_widths=widths)
  params = _numpy_params(model, (1, 100))
  x = RNG.uniform(size=(16, 100))
  lecun = jax.tree.map(
    lambda a: a / math.sqrt(a.shape[0]) if a.ndim == 2 else a * 0, params
  )
  ibp = ibp_init(params, jax.random.key(0))
  # Radius growth through an affine layer is n σ √(2/π): 2 with IBP init,
  # √(2n/π) ≈ 12.8 with LeCun init (σ = 1/√n), n = 256. Checked from the second
  # layer on, whose inputs are ReLU outputs.
  ibp_growth = _ibp_radius_growth(ibp, widths, x, 0.01)[1:]
  lecun_growth = _ibp_radius_growth(lecun, widths, x, 0.01)[1:]
  np.testing.assert_allclose(ibp_growth, 2.0, rtol=0.1)
  assert np.all(lecun_growth > 10.0), lecun_growth


def test_deterministic_and_jit_equals_eager(cnn_params):
  before, jitted = cnn_params
  eager = ibp_init(before, jax.random.key(0))
  jax.tree.map(np.testing.assert_allclose, eager, jitted)
  other = ibp_init(before, jax.random.key(1))
  assert not np.allclose(other["conv_0"]["kernel"], eager["conv_0"]["kernel"])


def test_missing_output_layer_is_a_clear_error():
  params = {
    "fc1": {"kernel": jnp.ones((2, 3))},
    "fc2": {"kernel": jnp.ones((3, 2))},
  }
  with pytest.raises(ValueError, match=r"no output layer named 'logits'.*fc1"):
    ibp_init(params, jax.random.key(0))
  new = ibp_init(params, jax.random.key(0), output_layer="fc2")
  np.testing.assert_array_equal(new["fc2"]["kernel"], 1.0)
  assert new["fc1"]["kernel"].std() > 0


def test_ibp_normal_rejects_vectors():
  with pytest.raises(ValueError, match="kernels"):
    ibp_normal()(jax.random.key(0), (5,))
