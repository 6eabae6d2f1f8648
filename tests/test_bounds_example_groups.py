"""Bounds in example groups: the same bounds as over the whole batch.

How a batch is split is checked on IBP (cheap to trace) over l∞, l2 and
box sets, with and without a margin specification and with per-example
radii, in unequal groups; CROWN's ``example_group`` on a net with three
ReLU layers (so CROWN runs intermediate passes), under jit and through
grad."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.bounds import (
  Box,
  L2Ball,
  LinfBall,
  crown,
  example_groups,
  ibp,
  margin_spec,
)
from cure_jax.bounds import jit as bounds_jit

NUM_CLASSES = 4


class Mlp(nn.Module):
  @nn.compact
  def __call__(self, x):
    for width in (8, 8, 6):
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(NUM_CLASSES)(x)


def _network(batch=7, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.uniform(keys[0], (batch, 5))
  labels = jax.random.randint(keys[1], (batch,), 0, NUM_CLASSES)
  variables = Mlp().init(keys[2], x)
  return Mlp().apply, variables, x, labels


def _sets(x):
  eps = jnp.linspace(0.02, 0.2, x.shape[0])
  return {
    "linf": LinfBall(x, 0.1, domain=(0.0, 1.0)),
    "linf_per_example": LinfBall(x, eps, domain=(0.0, 1.0)),
    "l2": L2Ball(x, 0.4),
    "box": Box(x - 0.05, x + 0.05),
  }


def _assert_same(got, expected):
  for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_sizes_are_nearly_equal_and_cover_the_batch():
  assert example_groups.sizes(100, 16) == [15, 15, 14, 14, 14, 14, 14]
  assert example_groups.sizes(17, 16) == [9, 8]
  assert example_groups.sizes(16, 16) == [16]
  assert example_groups.sizes(5, 1) == [1] * 5
  for batch in range(1, 40):
    for group in range(1, 12):
      got = example_groups.sizes(batch, group)
      assert sum(got) == batch and max(got) <= group
      assert max(got) - min(got) <= 1


@pytest.mark.parametrize("name", ["linf", "linf_per_example", "l2", "box"])
def test_groups_give_the_whole_batch_bounds(name):
  apply, variables, x, labels = _network()
  ball = _sets(x)[name]
  for spec in (margin_spec(labels, NUM_CLASSES), None):
    expected = ibp(apply)(variables, ball, spec=spec)
    rows = NUM_CLASSES - 1 if spec is not None else NUM_CLASSES
    for group in (1, 3, 4):
      got = example_groups.in_groups(ibp(apply), group)(
        variables, ball, spec=spec
      )
      assert got.lower.shape == expected.lower.shape == (7, rows)
      _assert_same(got, expected)


def test_crown_in_groups_under_jit_and_through_grad():
  apply, variables, x, labels = _network(batch=5)
  spec = margin_spec(labels, NUM_CLASSES)
  eps = jnp.linspace(0.05, 0.2, 5)

  def loss(variables, center, group):
    ball = LinfBall(center, eps, domain=(0.0, 1.0))
    out = crown(apply, bound="lower", example_group=group)(
      variables, ball, spec=spec
    )
    return jnp.sum(jax.nn.softplus(-out.lower)), out.lower

  gradient = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  whole = bounds_jit(gradient, static_argnums=2)(variables, x, None)
  grouped = bounds_jit(gradient, static_argnums=2)(variables, x, 2)
  assert np.all(np.isfinite(whole[0][1])) and whole[0][1].shape == (5, 3)
  _assert_same(grouped, whole)


def test_a_batch_within_one_group_is_bounded_at_once():
  calls = []

  def bounded(ball, spec=None):
    calls.append(ball.shape[0])
    return ball.center

  x = jnp.zeros((6, 2))
  example_groups.in_groups(bounded, 6)(LinfBall(x, 0.1))
  example_groups.in_groups(bounded, None)(LinfBall(x, 0.1))
  example_groups.in_groups(bounded, 4)(LinfBall(x, 0.1))
  assert calls == [6, 6, 3, 3]


def test_bad_groups_are_refused():
  with pytest.raises(ValueError, match="example_group must be None or >= 1"):
    crown(lambda x: x, example_group=0)
  with pytest.raises(ValueError, match="one batch size"):
    example_groups.in_groups(lambda *a, spec=None: a, 2)(
      LinfBall(jnp.zeros((4, 2)), 0.1), LinfBall(jnp.zeros((3, 2)), 0.1)
    )
