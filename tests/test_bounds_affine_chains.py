"""Merged affine chains: the same bounds with fewer reductions.

A BatchNorm traces to sub/mul/add; merged, the backward pass pulls the three
back as one map. The bounds must not change (to float rounding), the chain
must stop at values used twice (a residual connection), and the backward
pass must take fewer reductions over the coefficients.
"""

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cure_jax.bounds import (
  L2Ball,
  LinfBall,
  UnsupportedPrimitiveError,
  affine_chains,
  alpha_crown,
  crown,
  crown_ibp,
  ibp,
  ibp_rules,
  margin_spec,
)
from cure_jax.bounds.graph import Const, trace
from cure_jax.bounds.interval import Interval
from cure_jax.bounds.linear_rules import AFFINE_PRIMITIVES


class ConvBnNet(nn.Module):
  """conv → BN (running statistics) → ReLU twice, a residual add, dense."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda: nn.BatchNorm(use_running_average=not train)
    h = nn.relu(bn()(nn.Conv(4, (3, 3), use_bias=False)(x)))
    skip = h
    h = nn.relu(bn()(nn.Conv(4, (3, 3), use_bias=False)(h)))
    h = h + skip
    return nn.Dense(5)(h.reshape(h.shape[0], -1))


def _network(seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.uniform(keys[0], (3, 6, 6, 1))
  y = jax.random.randint(keys[1], (3,), 0, 5)
  model = ConvBnNet()
  variables = model.init(keys[2], x)
  # Non-trivial running statistics, so that every BN offset is non-zero.
  stats = jax.tree_util.tree_map(
    lambda v: jax.random.uniform(keys[3], v.shape, minval=0.2, maxval=0.8),
    variables["batch_stats"],
  )
  return model.apply, dict(variables, batch_stats=stats), x, y


def _merged_names(apply, variables, x):
  graph, _ = trace(apply, (variables, LinfBall(x, 0.1)), {})
  bounded = set()  # values downstream of the input set
  for eqn in graph.eqns:
    if any(
      a == graph.inputs[-1] or a in bounded
      for a in eqn.inputs
      if not isinstance(a, Const)
    ):
      bounded.update(eqn.outputs)
  is_b = lambda a: (
    not isinstance(a, Const) and (a in bounded or a == graph.inputs[-1])
  )
  merged = affine_chains.merge(
    graph.eqns, is_b, AFFINE_PRIMITIVES, keep_out=graph.outputs
  )
  return graph, merged


def test_each_batch_norm_becomes_one_chain_and_residual_values_stay_visible():
  apply, variables, x, _ = _network()
  graph, merged = _merged_names(apply, variables, x)
  chains = [e for e in merged if e.name == affine_chains.NAME]
  # Two BNs (sub, mul, add each) and the dense bias; the residual add's
  # operand `skip` is used twice, so no chain runs through it.
  assert [[m.name for m in c.primitive.eqns] for c in chains[:2]] == [
    ["sub", "mul", "add"],
    ["sub", "mul", "add"],
  ]
  assert len(merged) < len(graph.eqns)
  swallowed = {
    v for c in chains for m in c.primitive.eqns[:-1] for v in m.outputs
  }
  uses = {}
  for eqn in graph.eqns:
    for a in eqn.inputs:
      if not isinstance(a, Const):
        uses[a] = uses.get(a, 0) + 1
  assert all(uses.get(v, 0) == 1 for v in swallowed)
  # Every value the merged list consumes is produced before it is used.
  produced = set(graph.inputs)
  for eqn in merged:
    assert all(isinstance(a, Const) or a in produced for a in eqn.inputs)
    produced.update(eqn.outputs)


@pytest.mark.parametrize(
  "ball,method",
  [
    ("linf", "crown_ibp"),
    ("l2", "crown_ibp"),
    ("linf", "crown"),
    ("l2", "crown"),
    # α-CROWN's passes are CROWN's (above) with optimized slopes: one ball.
    ("l2", "alpha_crown"),
  ],
)
def test_merging_changes_no_bound(ball, method, monkeypatch):
  apply, variables, x, y = _network(seed=1)
  input_set = (
    LinfBall(x, 0.05, domain=(0.0, 1.0)) if ball == "linf" else L2Ball(x, 0.3)
  )
  transform = {
    "crown_ibp": crown_ibp,
    "crown": crown,
    # Plain gradient steps: Adam's normalized steps would turn round-off
    # differences in near-zero gradients into different slopes.
    "alpha_crown": lambda f: alpha_crown(
      f, steps=3, optimizer=optax.sgd(0.01), early_stop=False
    ),
  }[method]
  spec = margin_spec(y, 5)
  merged = transform(apply)(variables, input_set, spec=spec)
  monkeypatch.setattr(affine_chains, "merge", lambda eqns, *a, **k: list(eqns))
  unmerged = transform(apply)(variables, input_set, spec=spec)
  np.testing.assert_allclose(merged.lower, unmerged.lower, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(merged.upper, unmerged.upper, rtol=1e-5, atol=1e-5)


def _reductions(fn, *args) -> int:
  """reduce_sum equations in ``fn``'s jaxpr, nested calls included."""

  def count(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
      total += eqn.primitive.name == "reduce_sum"
      for param in eqn.params.values():
        if isinstance(param, jex.core.ClosedJaxpr):
          total += count(param.jaxpr)
        elif isinstance(param, jex.core.Jaxpr):
          total += count(param)
    return total

  return count(jax.make_jaxpr(fn)(*args).jaxpr)


def test_merged_backward_pass_takes_fewer_reductions(monkeypatch):
  apply, variables, x, y = _network(seed=2)
  spec = margin_spec(y, 5)
  # A fresh function per count: make_jaxpr caches traces by function.
  bound = lambda: (
    lambda v, x: (
      crown_ibp(apply, bound="lower")(v, LinfBall(x, 0.05), spec=spec).lower
    )
  )
  merged = _reductions(bound(), variables, x)
  monkeypatch.setattr(affine_chains, "merge", lambda eqns, *a, **k: list(eqns))
  unmerged = _reductions(bound(), variables, x)
  # Per BN, one offset reduction instead of two (sub, add).
  assert merged == unmerged - 2


def test_a_refused_equation_inside_a_chain_still_raises(monkeypatch):
  """1 / (x + 1) is not affine in x. Given an IBP rule for it (here a
  reciprocal of positive intervals), the forward pass succeeds; merged into a
  chain, the backward pass would take its vector-Jacobian product silently.
  It must stay alone and meet the affine rule's refusal."""

  def reciprocal(eqn, args):
    numerator, divisor = args
    return [Interval(numerator / divisor.upper, numerator / divisor.lower)]

  monkeypatch.setitem(ibp_rules.RULES, "div", reciprocal)
  fn = lambda x: 2.0 * (1.0 / (x + 1.0)) - 3.0
  ball = LinfBall(jnp.ones((2, 3)), 0.1)
  ibp(fn)(ball)  # the forward pass bounds it
  with pytest.raises(UnsupportedPrimitiveError, match="div"):
    crown_ibp(fn)(ball)
