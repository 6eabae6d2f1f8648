"""Tests for cure_jax/bounds/midpoint.py and bound transforms' ``has_aux``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.bounds import Box, L2Ball, LinfBall, crown_ibp, ibp
from cure_jax.bounds.midpoint import midpoint
from cure_jax.models import ConvNet
from cure_jax.models.batch_norm import batch_moments


def test_midpoint_is_the_identity_on_arrays_under_jit_grad_and_vmap():
  x = jax.random.normal(jax.random.key(0), (3, 4))
  np.testing.assert_array_equal(midpoint(x), x)
  np.testing.assert_array_equal(jax.jit(midpoint)(x), x)
  np.testing.assert_array_equal(jax.vmap(midpoint)(x), x)
  np.testing.assert_allclose(
    jax.grad(lambda v: jnp.sum(midpoint(v) ** 3))(x), 3 * x**2, rtol=1e-6
  )
  np.testing.assert_allclose(  # forward mode too
    jax.jvp(midpoint, (x,), (jnp.ones_like(x),))[1], jnp.ones_like(x)
  )


def test_under_ibp_the_midpoint_is_the_centre_of_the_bounds_by_hand():
  # relu of [x − 1, x + 1]: [0, 1], [0, 2], [1, 3] and [2, 4], [3, 5], [4, 6];
  # their centres' column means are 1.75, 2.5, 3.5, a constant of the pass.
  x = jnp.arange(6.0).reshape(2, 3)
  f = lambda v: jnp.mean(midpoint(jax.nn.relu(v)), axis=0) * v
  bounds = ibp(f)(LinfBall(x, 1.0))
  scale = jnp.array([1.75, 2.5, 3.5])
  np.testing.assert_allclose(bounds.lower, scale * (x - 1.0), rtol=1e-6)
  np.testing.assert_allclose(bounds.upper, scale * (x + 1.0), rtol=1e-6)


def test_the_midpoint_of_an_lp_ball_is_its_boxs_centre():
  x = jnp.array([[0.5, 0.2, 0.9]])
  bounds = ibp(lambda v: midpoint(v) + v)(L2Ball(x, 0.3, domain=(0.0, 1.0)))
  box = L2Ball(x, 0.3, domain=(0.0, 1.0)).bounding_box()
  center = 0.5 * (box.lower + box.upper)
  np.testing.assert_allclose(bounds.lower, center + box.lower, rtol=1e-6)
  np.testing.assert_allclose(bounds.upper, center + box.upper, rtol=1e-6)


def test_gradients_flow_through_the_midpoint_into_the_parameters():
  x = jnp.array([[0.3, -0.2], [0.1, 0.4]])

  def upper_sum(w):
    f = lambda v: midpoint(v @ w).mean(0) * (v @ w)
    return ibp(f)(Box(x - 0.1, x + 0.1)).upper.sum()

  w = jnp.array([[1.0, -2.0], [0.5, 1.5]])
  numeric = (
    upper_sum(w + 1e-3 * jnp.eye(2)[0][:, None] * jnp.eye(2)[0])
    - upper_sum(w - 1e-3 * jnp.eye(2)[0][:, None] * jnp.eye(2)[0])
  ) / 2e-3
  np.testing.assert_allclose(jax.grad(upper_sum)(w)[0, 0], numeric, rtol=1e-2)


MODEL = ConvNet(
  num_classes=3,
  conv_widths=(4,),
  conv_strides=(1,),
  dense_widths=(5,),
  batch_norm=True,
)


@pytest.fixture(scope="module")
def model_and_box():
  x = jax.random.uniform(jax.random.key(1), (6, 5, 5, 1))
  variables = MODEL.init(jax.random.key(2), x, train=False)
  return variables, Box(jnp.clip(x - 0.05, 0, 1), jnp.clip(x + 0.05, 0, 1))


def test_train_mode_batchnorm_is_bounded_with_the_centres_moments(
  model_and_box,
):
  """IBP of train mode = IBP of eval mode with the bounds' centres' moments.

  The moments, written out: the first BatchNorm's input is conv(x) (no bias,
  padding 1),
  whose IBP centre is conv of the box's centre; the dense BatchNorm's input
  centre comes from IBP of the layers before it.
  """
  variables, box = model_and_box
  fn = lambda v, s: MODEL.apply(v, s, train=True, mutable=["batch_stats"])
  bounds, state = ibp(fn, has_aux=True)(variables, box)

  params = variables["params"]
  conv = lambda v: jax.lax.conv_general_dilated(
    v,
    params["conv_0"]["kernel"],
    (1, 1),
    ((1, 1), (1, 1)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  mean0, var0 = batch_moments(conv(0.5 * (box.lower + box.upper)))
  # The dense layer's input centre, from IBP of the prefix with these moments.
  stats = {
    "conv_0_bn": {"mean": mean0, "var": var0},
    "dense_0_bn": variables["batch_stats"]["dense_0_bn"],
  }

  def prefix(v, s):
    return MODEL.apply(
      v, s, train=False, capture_intermediates=True, mutable=["intermediates"]
    )[1]

  inter = ibp(prefix)({"params": params, "batch_stats": stats}, box)
  dense_in = inter["intermediates"]["dense_0"]["__call__"][0]
  stats["dense_0_bn"] = dict(
    zip(("mean", "var"), batch_moments(dense_in.center))
  )
  expected = ibp(MODEL.apply)(
    {"params": params, "batch_stats": stats}, box, train=False
  )
  np.testing.assert_allclose(bounds.lower, expected.lower, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bounds.upper, expected.upper, rtol=1e-5, atol=1e-6)
  # The running statistics moved towards those moments (momentum 0.9).
  running = state["batch_stats"]["conv_0_bn"]
  np.testing.assert_allclose(running["mean"], 0.1 * mean0, rtol=1e-5, atol=1e-7)
  assert isinstance(running["mean"], jax.Array)


def test_train_mode_bounds_contain_the_fixed_moment_network_on_samples(
  model_and_box,
):
  """Sound for the network whose BatchNorms use the (fixed) midpoint moments."""
  variables, box = model_and_box
  fn = lambda v, s: MODEL.apply(
    v, s, train=True, mutable=["batch_stats", "batch_moments"]
  )
  bounds, state = ibp(fn, has_aux=True)(variables, box)
  fixed = {"params": variables["params"], "batch_stats": state["batch_moments"]}
  samples = jax.random.uniform(jax.random.key(3), (200,) + box.lower.shape)
  points = box.lower + samples * (box.upper - box.lower)
  outputs = jax.vmap(lambda p: MODEL.apply(fixed, p, train=False))(points)
  assert bool(jnp.all(outputs >= bounds.lower - 1e-5))
  assert bool(jnp.all(outputs <= bounds.upper + 1e-5))


def test_has_aux_with_a_spec_bounds_only_the_output():
  x = jnp.array([[0.2, 0.7]])
  w = jnp.array([[1.0, -1.0, 0.5], [2.0, 0.5, -1.0]])
  fn = lambda v: (v @ w, {"centre": midpoint(v), "box": v})
  spec = jnp.array([[[1.0, -1.0, 0.0]]])
  bounds, aux = ibp(fn, has_aux=True)(LinfBall(x, 0.1), spec=spec)
  plain = ibp(lambda v: v @ w)(LinfBall(x, 0.1), spec=spec)
  np.testing.assert_allclose(bounds.lower, plain.lower, rtol=1e-6)
  np.testing.assert_allclose(aux["centre"], x, rtol=1e-6)
  np.testing.assert_allclose(aux["box"].lower, x - 0.1, rtol=1e-6)


def test_has_aux_needs_a_pair():
  with pytest.raises(ValueError, match=r"pair \(output, aux\)"):
    ibp(lambda v: v * 2.0, has_aux=True)(LinfBall(jnp.ones((1, 2)), 0.1))


def test_crown_ibp_takes_the_midpoint_that_ibp_gives_as_a_constant():
  """CROWN-IBP's intermediate bounds are IBP's, so is the midpoint's value."""
  x = jnp.array([[0.2, -0.4, 1.0], [0.6, 0.0, -1.0]])
  constant = x.mean(0)  # the box's centre is x
  with_midpoint = crown_ibp(lambda v: jax.nn.relu(midpoint(v).mean(0) * v))(
    LinfBall(x, 0.1)
  )
  written_out = crown_ibp(lambda v: jax.nn.relu(constant * v))(LinfBall(x, 0.1))
  np.testing.assert_allclose(with_midpoint.lower, written_out.lower, rtol=1e-6)
  np.testing.assert_allclose(with_midpoint.upper, written_out.upper, rtol=1e-6)
