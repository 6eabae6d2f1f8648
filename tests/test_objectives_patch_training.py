"""Tests for cure_jax/objectives/patch_training.py (random-patch IBP)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.models import ConvNet
from cure_jax.objectives import patch_training
from cure_jax.objectives.base import (
  Network,
  cross_entropy,
  robust_cross_entropy,
)
from cure_jax.perturbations import patches

NUM_CLASSES = 4
MODEL = ConvNet(
  num_classes=NUM_CLASSES,
  conv_widths=(4,),
  conv_strides=(2,),
  dense_widths=(16,),
  batch_norm=False,
)


@pytest.fixture(scope="module")
def setup():
  x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
  variables = MODEL.init(jax.random.key(1), x, train=False)
  labels = jnp.arange(6) % NUM_CLASSES
  return Network(MODEL.apply, variables, NUM_CLASSES), x, labels


def _jitted_patch_ibp(network, **settings):
  """random_patch_ibp of ``network`` with static settings, jitted: one
  compilation instead of one per operation."""
  return jax.jit(
    functools.partial(patch_training.random_patch_ibp, network, **settings)
  )


def test_loss_is_the_worst_sampled_position(setup):
  network, x, labels = setup
  key = jax.random.key(7)
  robust = _jitted_patch_ibp(network, size=2, positions=5)(x, labels, key=key)
  corners = patch_training.sample_positions(key, 6, 5, 8, 8, 2)
  margin_lower = jax.jit(lambda box, y: network.margin_bounds(box, y).lower)
  for i in range(6):
    box = patches.patch_boxes(x, np.full(5, i), corners[i], 2)
    margins = margin_lower(box, jnp.full(5, labels[i]))
    losses = robust_cross_entropy(margins)
    np.testing.assert_allclose(robust.loss[i], losses.max(), rtol=1e-5)
    assert bool(robust.certified[i]) == bool(jnp.all(margins > 0))
    worst = int(jnp.argmax(losses))
    np.testing.assert_allclose(robust.logits[i, 1:], -margins[worst], rtol=1e-5)


def test_sampled_positions_are_valid_and_reach_the_borders():
  corners = np.asarray(
    patch_training.sample_positions(jax.random.key(0), 200, 8, 7, 9, 3)
  )
  assert corners.shape == (200, 8, 2)
  assert corners[..., 0].min() == 0 and corners[..., 0].max() == 7 - 3
  assert corners[..., 1].min() == 0 and corners[..., 1].max() == 9 - 3


def test_a_zero_fraction_is_the_clean_loss(setup):
  network, x, labels = setup
  robust = _jitted_patch_ibp(network, size=3, positions=2, fraction=0.0)(
    x, labels, key=jax.random.key(0)
  )
  clean = cross_entropy(network.logits(x), labels)
  np.testing.assert_allclose(robust.loss, clean, rtol=1e-5, atol=1e-6)


def test_the_loss_grows_with_the_patch_and_with_the_fraction(setup):
  network, x, labels = setup
  key = jax.random.key(3)
  loss = lambda size, fraction: (
    _jitted_patch_ibp(network, size=size, positions=3, fraction=fraction)(
      x, labels, key=key
    ).loss
  )
  assert np.all(loss(2, 0.5) <= loss(2, 1.0) + 1e-6)
  # A 1×1 window at a corner lies inside the 3×3 window at that corner.
  assert np.all(loss(1, 1.0) <= loss(8, 1.0) + 1e-6)


def test_differentiable_and_jit_equals_no_jit(setup):
  network, x, labels = setup

  def mean_loss(params, key):
    net = network._replace(variables={"params": params})
    return patch_training.random_patch_ibp(
      net, x, labels, size=2, positions=3, key=key
    ).loss.mean()

  params = network.variables["params"]
  key = jax.random.key(4)
  value, grads = jax.value_and_grad(mean_loss)(params, key)
  jit_value, jit_grads = jax.jit(jax.value_and_grad(mean_loss))(params, key)
  np.testing.assert_allclose(value, jit_value, rtol=1e-5)
  for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(jit_grads)):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-6)
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
  "size, positions, message",
  [
    (9, 2, "does not fit"),
    (0, 2, "integer >= 1"),
    (2, 0, "positions"),
  ],
)
def test_bad_settings_are_refused(setup, size, positions, message):
  network, x, labels = setup
  with pytest.raises(ValueError, match=message):
    patch_training.random_patch_ibp(
      network, x, labels, size=size, positions=positions, key=jax.random.key(0)
    )
