"""A function as a flat list of primitive equations, ready to be bounded.

`trace` turns ``fn(*args)`` into a `Graph`: the function's jaxpr with every
call-like primitive (nested ``jit``, ``custom_jvp_call`` such as
``jax.nn.relu``, ``custom_vjp_call``, ``closed_call``, ``remat``) inlined, so
that each bound method needs one rule per *primitive* and nothing else. Each
equation keeps the user's source line for error messages.

Values in a graph are referred to by integer ids; constants are wrapped in
`Const`. Interpreters (the IBP forward pass, the CROWN backward pass) keep
their own environment ``{id: value}``: nothing in a graph mutates.
"""

import collections
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import (
  Any,
  NamedTuple,
)

import jax
import jax.extend as jex
import numpy as np

from cure_jax.bounds.sets import is_input_set

# Primitives whose body is inlined: the bound of a call is the bound of its body.
_CALL_PRIMITIVES = frozenset(
  {
    "pjit",
    "jit",
    "closed_call",
    "core_call",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
    "remat",
    "checkpoint",
    "remat2",
    "custom_lin",
  }
)
_BODY_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


class UnsupportedPrimitiveError(NotImplementedError):
  """A primitive on the path from an input set to the output has no rule."""


@dataclasses.dataclass(frozen=True)
class Const:
  """A constant operand (a literal, a closed-over array or a concrete input)."""

  value: Any


@dataclasses.dataclass(frozen=True)
class Eqn:
  """One primitive application: ``outputs = primitive(*inputs, **params)``."""

  primitive: Any  # jax.extend.core.Primitive
  inputs: tuple[Any, ...]  # int ids or Const
  outputs: tuple[int, ...]
  params: dict[str, Any]
  source: str  # the user's source line, e.g. "model.py:12 (CNN.__call__)"

  @property
  def name(self) -> str:
    return self.primitive.name

  def unsupported(
    self, method: str, why: str = ""
  ) -> UnsupportedPrimitiveError:
    reason = f": {why}" if why else ""
    return UnsupportedPrimitiveError(
      f"{method} has no rule for primitive '{self.name}' met at "
      f"{self.source}{reason}. Supported primitives are listed in "
      "cure_jax/bounds/*_rules.py; rewrite this step with supported "
      "operations or add a rule for it."
    )


class Graph(NamedTuple):
  """A flattened function.

  Attributes:
    eqns: equations in topological order.
    inputs: ids of the flattened positional inputs (one per argument leaf).
    outputs: ids (or Const) of the flattened outputs.
    out_tree: the output pytree structure.
  """

  eqns: tuple[Eqn, ...]
  inputs: tuple[int, ...]
  outputs: tuple[Any, ...]
  out_tree: Any

  def producers(self) -> dict[int, Eqn]:
    return {v: e for e in self.eqns for v in e.outputs}


def use_counts(
  eqns: Sequence[Eqn], extra: Iterable[Any] = ()
) -> dict[int, int]:
  """How many times each value id is an operand (plus once per ``extra``)."""
  counts = collections.Counter()
  for eqn in eqns:
    counts.update(a for a in eqn.inputs if not isinstance(a, Const))
  counts.update(a for a in extra if not isinstance(a, Const))
  return counts


def _source_line(eqn) -> str:
  try:
    return jex.source_info_util.summarize(eqn.source_info)
  except Exception:  # pylint: disable=broad-except
    return ""


def _body(eqn):
  """(jaxpr, consts) of a call-like equation's body."""
  for key in _BODY_PARAMS:
    if key in eqn.params:
      body = eqn.params[key]
      if isinstance(body, jex.core.ClosedJaxpr):
        return body.jaxpr, body.consts
      return body, ()
  raise ValueError(f"call primitive {eqn.primitive.name} without a body")


def _inline(
  jaxpr, consts, in_atoms, counter, call_site: str = ""
) -> tuple[list[Eqn], list[Any]]:
  """Inlines ``jaxpr`` applied to ``in_atoms``; returns (eqns, out atoms).

  Equations whose own source lies inside JAX (e.g. the ``max`` inside
  ``jax.nn.relu``) are attributed to the user's ``call_site``.
  """
  env: dict[Any, Any] = {}
  for var, value in zip(jaxpr.constvars, consts):
    env[var] = Const(value)
  for var, atom in zip(jaxpr.invars, in_atoms):
    env[var] = atom

  def read(v):
    if isinstance(v, jex.core.Literal):
      return Const(v.val)
    return env[v]

  eqns: list[Eqn] = []
  for eqn in jaxpr.eqns:
    inputs = [read(v) for v in eqn.invars]
    if eqn.primitive.name in _CALL_PRIMITIVES:
      body, body_consts = _body(eqn)
      inner, outs = _inline(
        body, body_consts, inputs, counter, _source_line(eqn) or call_site
      )
      eqns.extend(inner)
      for var, atom in zip(eqn.outvars, outs):
        env[var] = atom
      continue
    outputs = tuple(next(counter) for _ in eqn.outvars)
    for var, out in zip(eqn.outvars, outputs):
      if not isinstance(var, jex.core.DropVar):
        env[var] = out
    eqns.append(
      Eqn(
        eqn.primitive,
        tuple(inputs),
        outputs,
        dict(eqn.params),
        _source_line(eqn) or call_site or "<unknown source>",
      )
    )
  return eqns, [read(v) for v in jaxpr.outvars]


def flatten_args(args: Sequence[Any]):
  """Flattens ``args`` treating input sets as leaves."""
  return jax.tree_util.tree_flatten(args, is_leaf=is_input_set)


def trace(
  fn: Callable, args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[Graph, list[Any]]:
  """Traces ``fn(*args, **kwargs)`` to a flat `Graph`.

  Input sets among ``args`` are traced at their center's shape and dtype;
  ``kwargs`` are closed over (they must be concrete or static, e.g.
  ``train=False``).

  Returns:
    The graph and the flat list of argument leaves (input sets included).
  """
  leaves, in_tree = flatten_args(args)

  def shape_of(leaf):
    if is_input_set(leaf):
      leaf = leaf.center if hasattr(leaf, "center") else leaf.lower
    return jax.ShapeDtypeStruct(np.shape(leaf), jax.numpy.result_type(leaf))

  def flat_fn(*flat):
    return fn(*jax.tree_util.tree_unflatten(in_tree, flat), **kwargs)

  closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(
    *[shape_of(leaf) for leaf in leaves]
  )
  out_tree = jax.tree_util.tree_structure(out_shape)
  counter = itertools.count()
  inputs = tuple(next(counter) for _ in closed.jaxpr.invars)
  eqns, outputs = _inline(closed.jaxpr, closed.consts, list(inputs), counter)
  return Graph(tuple(eqns), inputs, tuple(outputs), out_tree), leaves


def evaluate_concrete(eqn: Eqn, values: Sequence[Any]) -> list[Any]:
  """Applies ``eqn`` to concrete operands (arrays or tracers)."""
  out = eqn.primitive.bind(*values, **eqn.params)
  return list(out) if eqn.primitive.multiple_results else [out]
