"""Chains of cheap affine equations merged into one for the backward pass.

A BatchNorm between a convolution and its ReLU traces to ``sub`` (mean),
``mul`` (scale) and ``add`` (shift); a dense layer's bias to ``add``. Pulled
back one by one, every equation with an offset costs a reduction
``<A_y, L(0)>`` over the [S, B, ...] coefficients, the largest tensors of a
CROWN pass. Pulled back as one map y = L_k(...L_1(x)) the chain costs one:
its vector-Jacobian product fuses into a single elementwise pass, and its
offset ``L(0)`` is evaluated once (cheap: no contraction is merged, so the
offset never costs a convolution).

A chain is a maximal sequence of affine equations without contractions,
each with exactly one bounded operand: the previous one's output, used
nowhere else. The merged equation's primitive is an `AffineChain`, which
evaluates the original equations; the affine rule treats it like any other.
"""

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import (
  Any,
)

from cure_jax.bounds.graph import Const, Eqn, evaluate_concrete, use_counts

NAME = "affine_chain"
_CONTRACTIONS = frozenset({"dot_general", "conv_general_dilated"})


@dataclasses.dataclass(frozen=True, eq=False)
class AffineChain:
  """A primitive-like composite: ``bind`` applies the chain's equations.

  Attributes:
    eqns: the original equations, in order; ``eqns[k]``'s bounded operand is
      ``eqns[k - 1]``'s output.
    inputs: the composite's operands (ids or `Const`), in the order
      ``bind`` receives them.
  """

  eqns: tuple[Eqn, ...]
  inputs: tuple[Any, ...]
  name: str = NAME
  multiple_results: bool = False

  def bind(self, *values):
    env = {
      atom: value
      for atom, value in zip(self.inputs, values)
      if not isinstance(atom, Const)
    }
    read = lambda a: a.value if isinstance(a, Const) else env[a]
    for eqn in self.eqns:
      (env[eqn.outputs[0]],) = evaluate_concrete(
        eqn, [read(a) for a in eqn.inputs]
      )
    return env[self.eqns[-1].outputs[0]]


def merge(
  eqns: Sequence[Eqn],
  is_bounded: Callable[[Any], bool],
  affine: frozenset,
  keep_out: Iterable[Any] = (),
  exclude: Callable[[Eqn], bool] | None = None,
) -> list[Eqn]:
  """``eqns`` with every affine chain of length ≥ 2 replaced by one equation.

  Args:
    eqns: a graph's equations in topological order.
    is_bounded: whether an operand atom (id or `Const`) holds a bound.
    affine: names of the affine primitives that may join a chain.
    keep_out: atoms that must stay visible (graph outputs, start values):
      a chain never swallows them.
    exclude: optional predicate of equations that must stay alone (e.g. the
      backward pass's early-stop equations).

  Returns:
    Equations in topological order (each merged one at its last member's
    place).
  """
  uses = use_counts(eqns, keep_out)
  visible = set(a for a in keep_out if not isinstance(a, Const))

  def joinable(eqn: Eqn) -> bool:
    if (
      eqn.name not in affine
      or eqn.name in _CONTRACTIONS
      or len(eqn.outputs) != 1
      or (exclude is not None and exclude(eqn))
    ):
      return False
    return sum(1 for a in eqn.inputs if is_bounded(a)) == 1

  def bounded_operand(eqn: Eqn):
    return next(a for a in eqn.inputs if is_bounded(a))

  # open_chains[id of a chain's tail output] = its equations so far;
  # position[that id] = the chain's slot in ``out``.
  open_chains: dict[int, list[Eqn]] = {}
  position: dict[int, int] = {}
  out: list[Any] = []
  for eqn in eqns:
    if not joinable(eqn):
      out.append(eqn)
      continue
    head = bounded_operand(eqn)
    chain = open_chains.pop(head, None)
    if chain is not None and uses[head] == 1 and head not in visible:
      chain.append(eqn)
      out[position.pop(head)] = None  # the chain moves to its new tail
    else:
      chain = [eqn]
    open_chains[eqn.outputs[0]] = chain
    position[eqn.outputs[0]] = len(out)
    out.append(chain)
  return [_as_eqn(item) for item in out if item is not None]


def _as_eqn(item) -> Eqn:
  if isinstance(item, Eqn):
    return item
  if len(item) == 1:
    return item[0]
  internal = {e.outputs[0] for e in item}
  inputs: list[Any] = []
  for eqn in item:
    for atom in eqn.inputs:
      if isinstance(atom, Const) or (
        atom not in internal and atom not in inputs
      ):
        inputs.append(atom)
  chain = AffineChain(tuple(item), tuple(inputs))
  return Eqn(chain, tuple(inputs), item[-1].outputs, {}, item[0].source)
