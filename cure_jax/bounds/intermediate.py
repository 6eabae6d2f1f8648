"""The CROWN forward pass: nonlinear inputs re-bounded by backward passes.

Each bounded operand of a nonlinear equation that lies downstream of another
nonlinearity is re-bounded by a backward pass from it (an identity
specification over its neurons: `layer_bounds`), intersected with its current
interval. Values reached from the inputs through affine operations only are
already exact under the forward rules and are left alone.

The passes may take lower slopes (α-CROWN over every layer, Xu et al., ICLR
2021): ``alphas[v]`` are the slopes the pass from value v uses for each
earlier ReLU-like unit, per row ([chunks, 2R, ...], the row plan's layout) or
shared by the rows ([1, ...]). ``references`` are intervals to intersect with
(the bounds of a plain CROWN pass, so that no slope loosens them).
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from cure_jax.bounds import (
  backward,
  conv_transpose,
  conv_windows,
  ibp_rules,
  layer_bounds,
  linear_rules,
)
from cure_jax.bounds.forward import (
  Env,
  as_interval,
  is_bounded,
  propagate,
  read,
)
from cure_jax.bounds.graph import Const, Eqn, Graph, evaluate_concrete
from cure_jax.bounds.interval import Interval
from cure_jax.bounds.layer_bounds import RowPlan


class Refinement(NamedTuple):
  """What a CROWN forward pass did to each re-bounded value.

  Attributes:
    plans: value id -> the rows it was bounded with.
    bounds: value id -> its refined interval.
  """

  plans: dict[int, RowPlan]
  bounds: dict[int, Interval]


def after_nonlinearity(graph: Graph, set_ids) -> set:
  """Ids of values computed downstream of a nonlinear equation (a product
  counts when both factors depend on the input sets)."""
  depends, downstream = set(set_ids), set()
  is_dependent = lambda a: not isinstance(a, Const) and a in depends
  for eqn in graph.eqns:
    if linear_rules.is_nonlinear(eqn, is_dependent) or any(
      a in downstream for a in eqn.inputs if not isinstance(a, Const)
    ):
      downstream.update(eqn.outputs)
    if any(is_dependent(a) for a in eqn.inputs):
      depends.update(eqn.outputs)
  return downstream


def _bounded_in(env: Env):
  return lambda a: not isinstance(a, Const) and a in env and is_bounded(env[a])


def largest_value(env: Env) -> int:
  """The largest per-example size of a bounded value in ``env``."""
  sizes = [
    math.prod(as_interval(v).shape[1:]) for v in env.values() if is_bounded(v)
  ]
  return max(sizes, default=1)


def plan_for(
  graph_consumers, atom, box: Interval, env: Env, only_unstable, pass_bytes
) -> RowPlan:
  """The rows of ``atom``'s backward pass (`layer_bounds.plan_rows`)."""
  mask = (
    layer_bounds.needed_neurons(
      graph_consumers.get(atom, []), atom, box, lambda a: read(env, a)
    )
    if only_unstable
    else None
  )
  itemsize = box.lower.dtype.itemsize
  largest = largest_value(env)
  return layer_bounds.plan_rows(
    mask,
    box.shape,
    lambda rows: (
      layer_bounds.rows_per_chunk(
        2 * rows, box.shape[0], largest, itemsize, pass_bytes
      )
      // 2
      or 1
    ),
  )


# Elementwise affine operations with one bounded operand (and constants).
_ELEMENTWISE = frozenset(
  {"add", "sub", "mul", "div", "neg", "convert_element_type"}
)


def _batch_free(eqn: Eqn) -> bool:
  """Whether a contraction maps each example alike (batch axis 0 to 0)."""
  if eqn.name == "conv_general_dilated":
    lhs_spec, _, out_spec = eqn.params["dimension_numbers"]
    return (
      lhs_spec[0] == 0
      and out_spec[0] == 0
      and eqn.params.get("batch_group_count", 1) == 1
    )
  (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
  return not lhs_batch and 0 not in lhs_contract


def _chain_to_contraction(producers, env: Env, atom):
  """(contraction, elementwise equations after it) computing ``atom``.

  None unless ``atom = g(L(x))`` with L a batch-free contraction of a
  bounded x by constants and g elementwise affine operations with constants.
  """
  chain, value = [], atom
  while True:
    eqn = producers.get(value)
    if eqn is None or len(eqn.outputs) != 1:
      return None
    args = [read(env, a) for a in eqn.inputs]
    bounded = [i for i, a in enumerate(args) if is_bounded(a)]
    if len(bounded) != 1:
      return None
    (i,) = bounded
    if eqn.name in ("conv_general_dilated", "dot_general"):
      if i != 0 or not _batch_free(eqn):
        return None
      return eqn, chain[::-1]
    if (
      eqn.name not in _ELEMENTWISE
      or (eqn.name == "div" and i != 0)
      or as_interval(args[i]).shape != as_interval(env[value]).shape
    ):
      return None
    chain.append(eqn)
    value = eqn.inputs[i]


def leading_contraction(producers, env: Env, atom):
  """The first step of the passes from ``atom``, shared by the batch.

  When ``atom = s ⊙ L(x) + t`` (`_chain_to_contraction`: L a contraction
  applied alike to every example, s and t from elementwise operations), a
  row +e_i (-e_i) at ``atom`` is the row ±s_i Lᵀe_i at x plus the constant
  ±t_i, and Lᵀe_i is pulled back once for the batch, for one sign: the
  vector-Jacobian product of a one-hot start, the dominant cost of an
  identity pass through a convolution, shrinks by 2B.

  Returns:
    None, or ``rows(index [R]) -> (x, start [2R, B, *x], offset [2R, B])``.
  """
  found = _chain_to_contraction(producers, env, atom)
  if found is None:
    return None
  contraction, chain = found
  x = contraction.inputs[0]
  x_shape = as_interval(env[x]).shape
  z = contraction.outputs[0]
  z_shape = as_interval(env[z]).shape
  dtype = as_interval(env[atom]).lower.dtype

  def run_chain(value):
    values = {z: value}
    for eqn in chain:
      args = [
        read(env, a) if isinstance(a, Const) or a not in values else values[a]
        for a in eqn.inputs
      ]
      values[eqn.outputs[0]] = evaluate_concrete(eqn, args)[0]
    return values[atom].reshape(z_shape[0], -1)

  # Exact slopes: the derivative of the chain (not g(1) - g(0)).
  offset, scale = jax.jvp(
    run_chain, (jnp.zeros(z_shape, dtype),), (jnp.ones(z_shape, dtype),)
  )
  weights = [read(env, a) for a in contraction.inputs[1:]]

  def single(v):
    return evaluate_concrete(contraction, [v] + weights)[0]

  if contraction.name == "conv_general_dilated":
    pull_one = conv_transpose.pullback(
      contraction.primitive, contraction.params, weights[0], x_shape, dtype
    )
    pull = lambda c: (pull_one(c),)
  else:
    _, pull = jax.vjp(single, jnp.zeros((1,) + tuple(x_shape[1:]), dtype))

  def rows(index):
    eye = jax.nn.one_hot(index, math.prod(z_shape[1:]), dtype=dtype)
    (pulled,) = jax.vmap(pull)(eye.reshape((-1, 1) + tuple(z_shape[1:])))
    row_scale = scale[:, index].T  # [R, B]
    start = row_scale.reshape(row_scale.shape + (1,) * (len(x_shape) - 1))
    start = start * pulled
    row_offset = offset[:, index].T
    return (
      x,
      jnp.concatenate([start, -start], axis=0),
      jnp.concatenate([row_offset, -row_offset], axis=0),
    )

  return rows


def refined_environment(
  graph: Graph,
  leaves,
  sets: dict[int, Any],
  *,
  only_unstable: bool = True,
  pass_bytes: int | None = layer_bounds.DEFAULT_PASS_BYTES,
  plans: dict[int, RowPlan] | None = None,
  alphas: dict[int, dict] | None = None,
  shared: dict[int, dict] | None = None,
  references: dict[int, Interval] | None = None,
  windows: bool = True,
) -> tuple[Env, Refinement]:
  """The forward environment with CROWN-refined nonlinear inputs.

  Args:
    graph, leaves, sets: the traced function, its argument leaves, and the
      input sets by graph input id.
    only_unstable: bound only the neurons whose current interval straddles
      a ReLU-like consumer's threshold (`layer_bounds.needed_neurons`).
    pass_bytes: memory budget of a pass's coefficients (rows per chunk).
    plans: optional fixed rows per value (else planned from the intervals).
    alphas: optional per-row slopes {value: {unit output id: slopes}}.
    shared: optional slopes shared by a value's rows, same keys.
    references: optional intervals to intersect each refined value with.
    windows: carry a pass through convolution chains as windows
      (`conv_windows`, the same bounds at a fraction of the cost); False
      keeps every pass dense.

  Returns:
    (environment, `Refinement`).
  """
  consumers = layer_bounds.relu_like_consumers(graph)
  downstream = after_nonlinearity(graph, sets)
  producers = graph.producers()
  used_plans: dict[int, RowPlan] = {}
  refined: dict[int, Interval] = {}

  def refine_value(atom, env: Env) -> Interval:
    current = as_interval(env[atom])
    if references is not None and atom in references:
      current = current.intersect(references[atom])
    plan = (plans or {}).get(atom)
    if plan is None:
      plan = plan_for(consumers, atom, current, env, only_unstable, pass_bytes)
    used_plans[atom] = plan
    if plan.chunks == 0:
      return current

    windowed = (
      conv_windows.windowed_pass(producers, env, sets, atom)
      if windows
      else None
    )
    first = (
      leading_contraction(producers, env, atom) if windowed is None else None
    )
    dtype = current.lower.dtype

    def pass_fn(index, slopes):
      if windowed is not None:
        lower, handoff = windowed(index[:, 0], slopes, plan.in_order)
        if handoff is None:
          return lower
        value, coeffs = handoff
        return lower + backward.lower_bound(
          graph, env, sets, {value: coeffs}, linear_rules.RULES, slopes
        )
      if first is None:
        start = layer_bounds.start_coefficients(index, current.shape, dtype)
        return backward.lower_bound(
          graph, env, sets, {atom: start}, linear_rules.RULES, slopes
        )
      x, start, offset = first(index[:, 0])
      lower = backward.lower_bound(
        graph, env, sets, {x: start}, linear_rules.RULES, slopes
      )
      return lower + offset

    lower = layer_bounds.map_chunks(
      pass_fn, plan, (alphas or {}).get(atom), (shared or {}).get(atom)
    )
    return layer_bounds.scatter_rows(lower, plan, current)

  def refine(eqn: Eqn, args, env: Env):
    if not linear_rules.is_nonlinear(eqn, _bounded_in(env)):
      return args
    args = list(args)
    for i, atom in enumerate(eqn.inputs):
      if isinstance(atom, Const) or atom not in downstream:
        continue
      if atom not in refined:
        refined[atom] = refine_value(atom, env)
        env[atom] = refined[atom]
      args[i] = refined[atom]
    return args

  env = propagate(graph, leaves, ibp_rules.RULES, "CROWN", refine=refine)
  return env, Refinement(used_plans, refined)


def window_slopes(
  graph: Graph, env: Env, sets: dict[int, Any], plans: dict[int, RowPlan]
) -> dict[int, dict[int, jax.Array]]:
  """α-CROWN's initial per-row slopes of the ReLUs that windowed passes go
  through (`conv_windows.initial_window_slopes`), in the plans' layout:
  {value: {ReLU output id: [chunks, 2R, B, h, w, C]}}."""
  producers = graph.producers()
  found = {}
  for atom, plan in plans.items():
    per_chunk = [
      conv_windows.initial_window_slopes(
        producers, env, sets, atom, plan.index[k, :, 0]
      )
      for k in range(plan.chunks)
    ]
    if per_chunk and per_chunk[0]:
      found[atom] = {
        unit: jnp.stack([chunk[unit] for chunk in per_chunk])
        for unit in per_chunk[0]
      }
  return found


def replan(
  graph: Graph,
  env: Env,
  refinement: Refinement,
  only_unstable: bool,
  pass_bytes: int | None,
) -> dict[int, RowPlan]:
  """Rows for passes whose results may still change a relaxation: the
  neurons still unstable under the refined bounds."""
  consumers = layer_bounds.relu_like_consumers(graph)
  return {
    atom: plan_for(consumers, atom, box, env, only_unstable, pass_bytes)
    for atom, box in refinement.bounds.items()
  }
