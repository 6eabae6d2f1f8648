"""Leaky ReLU, found in a traced graph and bounded as one activation.

``jax.nn.leaky_relu(x, k)`` traces to a comparison and a select::

  p = ge(x, 0);  d = mul(k, x);  y = select_n(p, d, x)

which the generic rules bound only by the hull of both cases (see
`ibp_rules.select_n`): [l, u] where the sign of x is uncertain. For
0 <= k <= 1 it is an increasing function with

  leaky_relu(x) = k x + (1 - k) relu(x),

so IBP maps [l, u] to [leaky(l), leaky(u)] and CROWN takes the ReLU's
relaxation, scaled by 1 - k, plus the line k x (α-CROWN optimizes its lower
slope like a ReLU's). `fuse` replaces every such triple whose comparison and
product are used nowhere else by one equation with a `LeakyRelu` primitive.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from cure_jax.bounds.graph import Const, Eqn, Graph, use_counts

NAME = "leaky_relu"


@dataclasses.dataclass(frozen=True)
class LeakyRelu:
  """A primitive-like leaky ReLU: ``bind(x) = x if x >= 0 else k x``."""

  negative_slope: float
  name: str = NAME
  multiple_results: bool = False

  def bind(self, x):
    return jnp.where(x >= 0, x, self.negative_slope * x)


def _literal(atom, producers: dict[int, Eqn]) -> float | None:
  """The value of a trace-time scalar constant, else None.

  A slope passed as a Python float reaches the product through a
  ``convert_element_type`` of the literal, which is followed.
  """
  producer = producers.get(atom) if not isinstance(atom, Const) else None
  if producer is not None and producer.name == "convert_element_type":
    atom = producer.inputs[0]
  if not isinstance(atom, Const):
    return None
  value = atom.value
  if not isinstance(value, (int, float, np.ndarray, np.generic)):
    return None  # an array computed at run time, or a tracer
  return float(value) if np.ndim(value) == 0 else None


def _negative_slope(
  product: Eqn, x: Any, producers: dict[int, Eqn]
) -> float | None:
  """k if ``product`` is k * x (or x * k) with a literal k in [0, 1]."""
  if product.name != "mul" or x not in product.inputs:
    return None
  other = product.inputs[1 - product.inputs.index(x)]
  k = _literal(other, producers)
  return k if k is not None and 0.0 <= k <= 1.0 else None


def _match(select: Eqn, producers: dict[int, Eqn]) -> tuple | None:
  """(x, k, comparison, product) if ``select`` is a leaky ReLU of x."""
  if select.name != "select_n" or len(select.inputs) != 3:
    return None
  which, if_false, if_true = select.inputs
  compare, product = producers.get(which), producers.get(if_false)
  if compare is None or product is None or compare.name not in ("ge", "gt"):
    return None
  x, threshold = compare.inputs
  if x != if_true or _literal(threshold, producers) != 0.0:
    return None
  k = _negative_slope(product, x, producers)
  return None if k is None else (x, k, compare, product)


def fuse(graph: Graph) -> Graph:
  """``graph`` with every leaky ReLU as one `LeakyRelu` equation."""
  producers = graph.producers()
  uses = use_counts(graph.eqns, graph.outputs)
  dropped, replaced = set(), {}
  for eqn in graph.eqns:
    found = _match(eqn, producers)
    if found is None:
      continue
    x, k, compare, product = found
    if uses[compare.outputs[0]] != 1 or uses[product.outputs[0]] != 1:
      continue  # the comparison or the product is needed elsewhere
    dropped.update((id(compare), id(product)))
    replaced[id(eqn)] = Eqn(LeakyRelu(k), (x,), eqn.outputs, {}, eqn.source)
  if not replaced:
    return graph
  eqns: list[Eqn] = [
    replaced.get(id(e), e) for e in graph.eqns if id(e) not in dropped
  ]
  return graph._replace(eqns=tuple(eqns))
