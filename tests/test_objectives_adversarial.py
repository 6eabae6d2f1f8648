"""Tests for cure_jax.objectives.adversarial (PGD adversarial training)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cure_jax.models import MLP
from cure_jax.objectives.adversarial import pgd_training_loss
from cure_jax.objectives.base import Network

# A linear binary classifier z = x W + b on 4 features: for label y the CE
# grows with x·(w_other − w_y), so its maximizer over a ball is known.
MODEL = MLP(num_classes=2, hidden_widths=())
KERNEL = jnp.array([[1.0, -1.0], [0.5, 2.0], [-2.0, 0.0], [0.0, 1.5]])
VARIABLES = {
  "params": {"logits": {"kernel": KERNEL, "bias": jnp.array([0.1, -0.2])}}
}
IMAGES = jnp.array([[0.5, 0.5, 0.5, 0.5], [0.95, 0.2, 0.6, 0.02]])
LABELS = jnp.array([0, 1])
EPS = 0.1


def _network(variables=VARIABLES):
  return Network(MODEL.apply, variables, num_classes=2)


def _ascent_direction():
  """[B, 4] rows w_other − w_y."""
  return KERNEL.T[1 - LABELS] - KERNEL.T[LABELS]


def _ce(x, labels=LABELS, variables=VARIABLES):
  logits = MODEL.apply(variables, x, train=False)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def test_linf_reaches_the_exact_maximizer():
  # One step of 2ε from anywhere in the ball lands on the corner
  # x + ε·sign(w_other − w_y), clipped to [0, 1].
  result = pgd_training_loss(
    _network(),
    IMAGES,
    LABELS,
    norm="linf",
    eps=EPS,
    steps=1,
    step_size=2 * EPS,
    key=jax.random.key(0),
  )
  corner = jnp.clip(IMAGES + EPS * jnp.sign(_ascent_direction()), 0.0, 1.0)
  np.testing.assert_allclose(result.loss, _ce(corner), rtol=1e-6)
  np.testing.assert_allclose(
    result.logits, MODEL.apply(VARIABLES, corner, train=False), rtol=1e-6
  )
  assert np.all(result.loss > _ce(IMAGES))


def test_l2_approaches_the_maximizer_from_below():
  direction = _ascent_direction()[:1]
  x, y = IMAGES[:1], LABELS[:1]  # Far from the border: no clipping.
  best = x + EPS * direction / jnp.linalg.norm(direction)
  result = pgd_training_loss(
    _network(),
    x,
    y,
    norm="l2",
    eps=EPS,
    steps=20,
    step_size=0.5 * EPS,
    key=jax.random.key(1),
  )
  upper = _ce(best, y)
  assert result.loss[0] <= upper[0] + 1e-6  # No point of the ball is better.
  np.testing.assert_allclose(result.loss, upper, rtol=1e-4)


def test_gradient_is_the_gradient_at_the_attack_point():
  # Danskin: the attack point is a constant for the parameter gradient.
  corner = jnp.clip(IMAGES + EPS * jnp.sign(_ascent_direction()), 0.0, 1.0)

  def training_loss(variables):
    return pgd_training_loss(
      _network(variables),
      IMAGES,
      LABELS,
      norm="linf",
      eps=EPS,
      steps=1,
      step_size=2 * EPS,
      key=jax.random.key(2),
    ).loss.mean()

  got = jax.jit(jax.grad(training_loss))(VARIABLES)
  want = jax.grad(lambda v: _ce(corner, variables=v).mean())(VARIABLES)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_jit_equals_eager(norm):
  def loss(variables, images, labels, key):
    return pgd_training_loss(
      _network(variables),
      images,
      labels,
      norm=norm,
      eps=EPS,
      steps=3,
      step_size=0.5 * EPS,
      key=key,
    )

  key = jax.random.key(3)
  eager = loss(VARIABLES, IMAGES, LABELS, key)
  jitted = jax.jit(loss)(VARIABLES, IMAGES, LABELS, key)
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_unknown_norm_raises():
  with pytest.raises(ValueError, match="linf"):
    pgd_training_loss(
      _network(),
      IMAGES,
      LABELS,
      norm="l3",
      eps=EPS,
      steps=1,
      step_size=EPS,
      key=jax.random.key(0),
    )
