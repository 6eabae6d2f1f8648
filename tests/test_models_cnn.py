"""Tests for cure_jax.models.cnn (ConvNet, CNN7, SmallCNN)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.models.cnn import CNN7, ConvNet, SmallCNN

RNG = np.random.default_rng(0)
MUTABLE = ["batch_stats", "batch_moments"]
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# A CPU-sized CNN7.
TINY = dict(conv_widths=(4, 4, 8, 8, 8), dense_widths=(16,))


def _images(batch, size, channels):
  return jnp.asarray(
    RNG.uniform(size=(batch, size, size, channels)), jnp.float32
  )


def _abstract_variables(model, x):
  return jax.eval_shape(
    lambda x: model.init(jax.random.key(0), x, train=False), x
  )


def _shapes(model, x):
  """Variable shapes, without computing anything."""
  return jax.tree.map(lambda a: a.shape, _abstract_variables(model, x))


def _variables(model, x):
  """Random variables of the model's structure, drawn with numpy (cheap)."""

  def draw(path, leaf):
    name = path[-1].key
    if name == "var":
      return RNG.uniform(0.5, 2.0, leaf.shape)
    if name == "scale":
      return 1.0 + 0.2 * RNG.standard_normal(leaf.shape)
    fan_in = math.prod(leaf.shape[:-1]) if name == "kernel" else 1
    return RNG.standard_normal(leaf.shape) / math.sqrt(fan_in)

  return jax.tree_util.tree_map_with_path(
    lambda p, l: jnp.asarray(draw(p, l), jnp.float32),
    _abstract_variables(model, x),
  )


def _num_params(shapes):
  return sum(
    math.prod(s)
    for s in jax.tree.leaves(
      shapes["params"], is_leaf=lambda s: isinstance(s, tuple)
    )
  )


@pytest.mark.parametrize(
  "size, channels, classes, features",
  [
    (32, 3, 10, 16 * 16 * 128),  # CIFAR-10
    (28, 1, 10, 14 * 14 * 128),  # MNIST
    (56, 3, 200, 28 * 28 * 128),  # TinyImageNet (56-crop)
  ],
)
def test_cnn7_shapes(size, channels, classes, features):
  model = CNN7(num_classes=classes)
  x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
  out = jax.eval_shape(
    lambda x: model.apply(
      model.init(jax.random.key(0), x, train=False), x, train=False
    ),
    x,
  )
  assert out.shape == (2, classes)
  shapes = _shapes(model, x)["params"]
  assert shapes["dense_0"]["kernel"] == (features, 512)
  assert shapes["logits"]["kernel"] == (512, classes)


def test_cnn7_parameter_count_matches_the_architecture():
  # 3×3 kernels, no bias before BN, BN has scale + shift per channel.
  conv = (
    3 * 3 * 3 * 64
    + 3 * 3 * 64 * 64
    + 3 * 3 * 64 * 128
    + 3 * 3 * 128 * 128
    + 3 * 3 * 128 * 128
  )  # 407,232
  dense = 16 * 16 * 128 * 512  # 16,777,216
  batch_norm = 2 * (64 + 64 + 128 + 128 + 128 + 512)  # 2,048
  logits = 512 * 10 + 10  # 5,130
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = _shapes(CNN7(), x)
  assert _num_params(shapes) == conv + dense + batch_norm + logits == 17191626
  assert set(shapes["batch_stats"]) == {
    "conv_0_bn",
    "conv_1_bn",
    "conv_2_bn",
    "conv_3_bn",
    "conv_4_bn",
    "dense_0_bn",
  }


def test_cnn7_without_batch_norm_has_biases_and_no_stats():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = _shapes(CNN7(batch_norm=False), x)
  assert "batch_stats" not in shapes
  # The reference's DM-large / cnn_7layer: 1,024 biases replace 2,048 BN.
  assert _num_params(shapes) == 17191626 - 2048 + 1024


def test_small_cnn_is_dm_small():
  x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
  shapes = _shapes(SmallCNN(batch_norm=False), x)["params"]
  # 28 → (28 − 4)/2 + 1 = 13 → 13 − 4 + 1 = 10, unpadded.
  assert shapes["conv_0"]["kernel"] == (4, 4, 1, 16)
  assert shapes["conv_1"]["kernel"] == (4, 4, 16, 32)
  assert shapes["dense_0"]["kernel"] == (10 * 10 * 32, 100)
  assert shapes["logits"]["kernel"] == (100, 10)
  assert _num_params({"params": shapes}) == (
    (16 * 16 + 16) + (16 * 16 * 32 + 32) + (3200 * 100 + 100) + (100 * 10 + 10)
  )


def test_stride_two_padding_is_symmetric_like_pytorch():
  # One 3×3 all-ones kernel, stride 2, padding 1 on a 4×4 image of ones: the
  # top-left window overlaps the image in 2×2 pixels, the bottom-right one in
  # 3×3. TF-style 'SAME' would pad (0, 1) and give 9 at the top left.
  model = ConvNet(
    conv_widths=(1,), conv_strides=(2,), batch_norm=False, num_classes=1
  )
  x = jnp.ones((1, 4, 4, 1))
  params = dict(_variables(model, x)["params"])
  params["conv_0"] = {"kernel": jnp.ones((3, 3, 1, 1)), "bias": jnp.zeros(1)}
  _, state = model.apply(
    {"params": params}, x, train=False, capture_intermediates=True
  )
  conv_out = state["intermediates"]["conv_0"]["__call__"][0]
  np.testing.assert_array_equal(conv_out[0, :, :, 0], [[4, 6], [6, 9]])


def test_bounded_pass_on_clean_moments_reproduces_train_logits():
  model = CNN7(**TINY, mean=CIFAR_MEAN, std=CIFAR_STD)
  x = _images(8, 8, 3)
  variables = _variables(model, x)
  logits, state = jax.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=MUTABLE)
  )(variables, x)
  assert jax.tree.structure(state["batch_moments"]) == jax.tree.structure(
    variables["batch_stats"]
  )
  eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
    {"params": variables["params"], "batch_stats": state["batch_moments"]}, x
  )
  np.testing.assert_allclose(eval_logits, logits, rtol=1e-5, atol=1e-5)


def test_normalization_is_the_first_op():
  normalized = CNN7(**TINY, mean=CIFAR_MEAN, std=CIFAR_STD)
  plain = CNN7(**TINY)
  x = _images(2, 8, 3)
  variables = _variables(normalized, x)
  x_normalized = (x - jnp.array(CIFAR_MEAN)) / jnp.array(CIFAR_STD)
  np.testing.assert_allclose(
    normalized.apply(variables, x, train=False),
    plain.apply(variables, x_normalized, train=False),
    rtol=1e-5,
    atol=1e-6,
  )


def test_eval_mode_is_per_sample():
  model = SmallCNN(num_classes=3)
  x = _images(4, 12, 2)
  variables = _variables(model, x)
  full = model.apply(variables, x, train=False)
  single = model.apply(variables, x[1:2], train=False)
  np.testing.assert_allclose(full[1:2], single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "model, shape, match",
  [
    (CNN7(), (2, 32, 32), "NHWC"),
    (SmallCNN(), (784,), "NHWC"),
    (
      ConvNet(conv_widths=(4, 4), conv_strides=(1,)),
      (1, 8, 8, 1),
      "one stride per convolution",
    ),
    (CNN7(mean=CIFAR_MEAN, std=CIFAR_STD), (1, 8, 8, 1), "3 means"),
  ],
)
def test_bad_input_errors(model, shape, match):
  with pytest.raises(ValueError, match=match):
    _abstract_variables(model, jax.ShapeDtypeStruct(shape, jnp.float32))
