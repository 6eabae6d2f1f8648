"""The forward interpreter: evaluates a `Graph` on bounds.

Values in the environment are concrete arrays (anything not depending on an
input set: parameters, constants, BatchNorm statistics), `Interval`s, or, for
an l_p ball not yet through its first affine operation, a `PendingBall`.
Equations without bounded operands are evaluated as usual — so the same
transform handles the concrete parts of a model (and stays differentiable in
them); equations with bounded operands go to the method's rule table.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp

from cure_jax.bounds import first_layer
from cure_jax.bounds.graph import Const, Eqn, Graph, evaluate_concrete
from cure_jax.bounds.interval import Interval
from cure_jax.bounds.sets import Box, LpBall

Env = dict[int, Any]
# Called before a rule with the operands; may return tighter operands (CROWN
# refines the pre-activation bounds of nonlinear equations this way).
RefineFn = Callable[[Eqn, list, Env], list]


def is_bounded(x) -> bool:
  return isinstance(x, (Interval, first_layer.PendingBall))


def initial_value(leaf) -> Any:
  """The environment value of an argument leaf."""
  if isinstance(leaf, Box):
    return Interval(jnp.asarray(leaf.lower), jnp.asarray(leaf.upper))
  if isinstance(leaf, LpBall):
    if leaf.p == math.inf:
      return leaf.bounding_box()
    return first_layer.from_lp_ball(leaf)
  return leaf


def read(env: Env, atom) -> Any:
  return atom.value if isinstance(atom, Const) else env[atom]


def propagate(
  graph: Graph,
  leaves: Sequence[Any],
  rules: dict[str, Any],
  method: str,
  refine: RefineFn | None = None,
) -> Env:
  """Runs ``graph`` on ``leaves`` (input sets among them) with ``rules``.

  Args:
    graph: the traced function.
    leaves: flat argument leaves, input sets as leaves.
    rules: primitive name -> rule ``(eqn, operands) -> outputs``.
    method: the method's name, for error messages.
    refine: optional hook tightening the operands of nonlinear equations.

  Returns:
    The environment {id: value} of every value in the graph.
  """
  env: Env = {}
  for var, leaf in zip(graph.inputs, leaves):
    env[var] = initial_value(leaf)
  for eqn in graph.eqns:
    args = [read(env, a) for a in eqn.inputs]
    if not any(is_bounded(a) for a in args):
      outs = evaluate_concrete(eqn, args)
    elif any(isinstance(a, first_layer.PendingBall) for a in args):
      outs = first_layer.apply(eqn, args, rules)
    else:
      rule = rules.get(eqn.name)
      if rule is None:
        raise eqn.unsupported(method)
      if refine is not None:
        args = refine(eqn, args, env)
      outs = rule(eqn, args)
    for var, out in zip(eqn.outputs, outs):
      env[var] = out
  return env


def as_interval(value) -> Interval:
  """An output value as an `Interval` (a concrete output is exact)."""
  if isinstance(value, Interval):
    return value
  if isinstance(value, first_layer.PendingBall):
    return value.to_box()
  return Interval(value, value)
