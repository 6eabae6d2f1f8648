"""Backward linear-bound rules (CROWN), one per primitive.

The backward pass carries, for each value v, coefficients A_v of shape
[S, *v.shape] (S output specifications, then v's own axes with the batch
first) such that the bound so far reads ``sum_v <A_v, v> + bias``. A rule maps
the coefficients of an equation's output to those of its bounded operands
plus a bias term [S, B]:

* affine operations y = L(x) + b: A_x = Lᵀ A_y (the vector-Jacobian product,
  vmapped over S, so no coefficients ever cross examples) and
  bias += <A_y, b> with b = L(0);
* ReLU and max with a constant c, y = c + relu(x - c): for a *lower* bound,
  positive coefficients take the lower line and negative ones the upper line
  of the relaxation (`relaxations.relu_relaxation`); min with a constant as
  min(x, c) = -max(-x, -c);
* max pooling: y >= x_j for the window's argmax j of the lower bounds
  (again a vector-Jacobian product), y <= max(u) for negative coefficients;
* smooth increasing activations (tanh, sigmoid, erf, atan, asinh, cbrt,
  sinh, exp, exp2, expm1, log, log1p, sqrt): tangent and chord lines by
  curvature (`relaxations.smooth_relaxation`);
* the product x·y of two bounded values (SiLU's x·sigmoid(x), GELU, gates,
  x·x): McCormick's planes (`product`);
* integer powers x^n, n >= 2 (GELU's x³, square): as smooth activations,
  by curvature;
* split (several outputs): the pieces' coefficients, concatenated;
* leaky ReLU (`leaky_relu.fuse`): k x + (1 - k) relu(x);
* select_n with a selector bounded by a comparison (ELU, jnp.where on a
  bounded value): the output's interval.

Upper bounds are lower bounds of the negated specification.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.bounds import (
  affine_chains,
  conv_transpose,
  ibp_rules,
  relaxations,
)
from cure_jax.bounds.first_layer import PendingBall
from cure_jax.bounds.forward import as_interval
from cure_jax.bounds.graph import Eqn, evaluate_concrete
from cure_jax.bounds.interval import Interval

# rule(eqn, operands, A_out, alpha) -> ({operand position: A_in}, bias [S, B])
LinearRule = Callable[
  [Eqn, Sequence[Any], jax.Array, jax.Array | None],
  tuple[dict[int, jax.Array], jax.Array],
]


def _is_bounded(x) -> bool:
  return isinstance(x, (Interval, PendingBall))


def _shape(x):
  return x.center.shape if isinstance(x, PendingBall) else x.lower.shape


def inner_product(coeffs: jax.Array, value: jax.Array) -> jax.Array:
  """<A, v> per specification and example: [S, B, ...] x [B, ...] -> [S, B]."""
  product = coeffs * value
  return product.reshape(product.shape[:2] + (-1,)).sum(-1)


# Linear in their bounded operands (L(0) = 0): no bias term.
LINEAR_PRIMITIVES = frozenset(
  {
    "dot_general",
    "conv_general_dilated",
    "mul",
    "div",
    "neg",
    "reshape",
    "transpose",
    "broadcast_in_dim",
    "squeeze",
    "expand_dims",
    "slice",
    "reduce_sum",
    "reduce_window_sum",
    "convert_element_type",
    "copy",
    "copy_p",
    "rev",
    "cumsum",
    "gather",
    "dynamic_slice",
  }
)
# Affine with a possibly non-zero offset L(0).
AFFINE_PRIMITIVES = LINEAR_PRIMITIVES | {
  "add",
  "add_any",
  "sub",
  "concatenate",
  "stack",
  "pad",
  "select_n",
  affine_chains.NAME,
}
_SINGLE_BOUNDED = frozenset({"dot_general", "conv_general_dilated", "mul"})


def bounded_positions(eqn: Eqn, args: Sequence[Any]) -> list:
  """Positions of an affine equation's bounded operands; errors if not affine."""
  positions = [i for i, a in enumerate(args) if _is_bounded(a)]
  if eqn.name in _SINGLE_BOUNDED and len(positions) > 1:
    raise eqn.unsupported(
      "CROWN", "the product of two bounded values is not affine"
    )
  if (eqn.name == "div" and positions != [0]) or (
    eqn.name == "select_n" and 0 in positions
  ):
    raise eqn.unsupported("CROWN", "this operand may not be bounded")
  return positions


def _is_kernel_convolution(eqn: Eqn, positions) -> bool:
  """A convolution of a bounded input (batch first) by a kernel that is
  not bounded: `conv_transpose.pullback` applies."""
  if eqn.name != "conv_general_dilated" or positions != [0]:
    return False
  numbers = eqn.params["dimension_numbers"]
  return numbers.lhs_spec[0] == 0 and numbers.out_spec[0] == 0


def affine(
  eqn: Eqn, args: Sequence[Any], coeffs: jax.Array, alpha=None
) -> tuple[dict[int, jax.Array], jax.Array]:
  """Aᵀ through an affine operation by its vector-Jacobian product."""
  del alpha
  positions = bounded_positions(eqn, args)

  def at(*xs):
    values = list(args)
    for i, x in zip(positions, xs):
      values[i] = x
    return evaluate_concrete(eqn, values)[0]

  if _is_kernel_convolution(eqn, positions):  # Lᵀ fast when differentiated
    pull = conv_transpose.pullback(
      eqn.primitive, eqn.params, args[1], _shape(args[0]), coeffs.dtype
    )
    return {0: jax.vmap(pull)(coeffs)}, jnp.zeros(
      coeffs.shape[:2], coeffs.dtype
    )
  zeros = [jnp.zeros(_shape(args[i]), coeffs.dtype) for i in positions]
  offset, vjp = jax.vjp(at, *zeros)
  pulled = jax.vmap(vjp)(coeffs)
  bias = (
    jnp.zeros(coeffs.shape[:2], coeffs.dtype)
    if eqn.name in LINEAR_PRIMITIVES
    else inner_product(coeffs, offset)
  )
  return dict(zip(positions, pulled)), bias


def select(eqn: Eqn, args: Sequence[Any], coeffs: jax.Array, alpha=None):
  """select_n: affine for a concrete selector; else the output's interval.

  With a selector bounded by a comparison (a piecewise function such as
  leaky ReLU), the bound is concretized at the output with its IBP interval
  (`ibp_rules.select_n`): sound, as tight as IBP at this equation, and no
  coefficients flow to the operands.
  """
  if not _is_bounded(args[0]):
    return affine(eqn, args, coeffs, alpha)
  (box,) = ibp_rules.select_n(
    eqn, [as_interval(a) if _is_bounded(a) else a for a in args]
  )
  return {}, box.min_inner_product(coeffs)


def _the_bounded_operand(eqn: Eqn, args: Sequence[Any]) -> int:
  """The position of the only bounded operand of a max or min."""
  positions = [i for i, a in enumerate(args) if _is_bounded(a)]
  if len(positions) != 1:
    raise eqn.unsupported("CROWN", f"{eqn.name} of two bounded values")
  return positions[0]


def split(
  eqn: Eqn, args: Sequence[Any], coeffs: tuple[jax.Array, ...], alpha=None
):
  """jnp.split, whose transpose concatenates the pieces' coefficients."""
  del args, alpha
  axis = eqn.params["axis"] + 1  # after the specification axis
  pulled = jnp.concatenate(coeffs, axis=axis)
  return {0: pulled}, jnp.zeros(pulled.shape[:2], pulled.dtype)


def _masked_inner_product(coeffs: jax.Array, value: jax.Array) -> jax.Array:
  """<A, v> with 0 wherever A is 0, even against an infinite v (log at 0)."""
  product = jnp.where(coeffs != 0, coeffs * value, 0.0)
  return product.reshape(product.shape[:2] + (-1,)).sum(-1)


def _pull_through(
  relax: relaxations.LinearRelaxation,
  coeffs: jax.Array,
  zero_lower_offset: bool = False,
  finite_offsets: bool = True,
):
  """A through ``a_l x + b_l <= y <= a_u x + b_u`` for a lower bound.

  Positive coefficients take the lower line, negative ones the upper line:
  A_x = A⁺ a_l + A⁻ a_u, bias <A⁺, b_l> + <A⁻, b_u>. With
  ``zero_lower_offset`` (b_l = 0, known at trace time) the reduction of
  <A⁺, b_l> over the [S, B, ...] coefficients is skipped.
  """
  positive, negative = jnp.maximum(coeffs, 0), jnp.minimum(coeffs, 0)
  coeffs_in = positive * relax.lower_slope + negative * relax.upper_slope
  product = inner_product if finite_offsets else _masked_inner_product
  bias = product(negative, relax.upper_offset)
  if not zero_lower_offset:
    bias = bias + product(positive, relax.lower_offset)
  return coeffs_in, bias


def relu_like(
  eqn: Eqn,
  args: Sequence[Any],
  coeffs: jax.Array,
  alpha: jax.Array | None = None,
):
  """max(x, c) = c + relu(x - c) for a concrete c, relaxed as in CROWN."""
  i = _the_bounded_operand(eqn, args)
  x, c = args[i], args[1 - i]
  relax = relaxations.relu_relaxation(x.lower - c, x.upper - c, alpha)
  # In x's coordinates: c + a (x - c) + b = a x + (c (1 - a) + b); the
  # ReLU's lower lines pass through 0 (b = 0), so for c = 0 the lower offset
  # is 0 and its reduction is skipped.
  in_x = relaxations.LinearRelaxation(
    relax.lower_slope,
    c * (1 - relax.lower_slope) + relax.lower_offset,
    relax.upper_slope,
    c * (1 - relax.upper_slope) + relax.upper_offset,
  )
  coeffs_in, bias = _pull_through(
    in_x, coeffs, zero_lower_offset=_is_literal_zero(c)
  )
  return {i: coeffs_in}, bias


def leaky(
  eqn: Eqn,
  args: Sequence[Any],
  coeffs: jax.Array,
  alpha: jax.Array | None = None,
):
  """leaky_relu(x) = k x + (1 - k) relu(x) (`leaky_relu.LeakyRelu`)."""
  box = as_interval(args[0])
  relax = relaxations.leaky_relu_relaxation(
    box.lower, box.upper, eqn.primitive.negative_slope, alpha
  )
  coeffs_in, bias = _pull_through(relax, coeffs, zero_lower_offset=True)
  return {0: coeffs_in}, bias


def min_like(
  eqn: Eqn,
  args: Sequence[Any],
  coeffs: jax.Array,
  alpha: jax.Array | None = None,
):
  """min(x, c) = -max(-x, -c) for a concrete c (clip, relu6, hard tanh)."""
  i = _the_bounded_operand(eqn, args)
  x = as_interval(args[i])
  negated = [
    Interval(-x.upper, -x.lower) if j == i else -a for j, a in enumerate(args)
  ]
  pulled, bias = relu_like(eqn, negated, -coeffs, alpha)
  return {i: -pulled[i]}, bias


def _is_literal_zero(c) -> bool:
  """Whether ``c`` is a trace-time constant equal to zero (``jax.nn.relu``)."""
  if not isinstance(c, (int, float, np.ndarray, np.generic)):
    return False  # an array computed at run time (or a tracer)
  return bool(np.all(np.asarray(c) == 0))


def max_pool(eqn: Eqn, args: Sequence[Any], coeffs: jax.Array, alpha=None):
  """max over windows/axes: y >= x_argmax(l) (lower), y <= max(u) (upper)."""
  del alpha
  (x,) = args
  positive, negative = jnp.maximum(coeffs, 0), jnp.minimum(coeffs, 0)
  _, select_argmax_of_lower = jax.vjp(
    lambda v: evaluate_concrete(eqn, [v])[0], x.lower
  )
  (coeffs_in,) = jax.vmap(select_argmax_of_lower)(positive)
  (max_upper,) = evaluate_concrete(eqn, [x.upper])
  return {0: coeffs_in}, inner_product(negative, max_upper)


def product(
  eqn: Eqn,
  args: Sequence[Any],
  coeffs: jax.Array,
  alpha: jax.Array | None = None,
):
  """z = x·y of two bounded values, by McCormick's planes.

  On the box [lx, ux] × [ly, uy], the four products (x − lx)(y − ly),
  (ux − x)(uy − y), (x − lx)(uy − y), (ux − x)(y − ly) >= 0 give

    P1 = ly x + lx y − lx ly,  P2 = uy x + ux y − ux uy   <=  x y,
    Q1 = uy x + lx y − lx uy,  Q2 = ly x + ux y − ux ly   >=  x y,

  and so does any mix λ P1 + (1 − λ) P2, λ Q1 + (1 − λ) Q2 with λ ∈ [0, 1].
  Positive coefficients take the lower mix, negative ones the upper:
  A_x = A⁺ (λ ly + (1−λ) uy) + A⁻ (λ uy + (1−λ) ly),
  A_y = A (λ lx + (1−λ) ux). CROWN takes λ = 1 (auto_LiRPA's planes; P1
  and P2 agree at the box's centre); α-CROWN optimizes λ per element and
  specification row, as it does the ReLU's slopes. Both operands may be the
  same value (x·x): their coefficients add up in the backward pass.
  """
  del eqn
  x, y = (as_interval(a) for a in args)
  if alpha is None:  # λ = 1 exactly (the other planes may be infinite)
    blend = lambda first, second: first
  else:
    mix = jnp.clip(alpha, 0.0, 1.0)
    blend = lambda first, second: mix * first + (1 - mix) * second
  positive, negative = jnp.maximum(coeffs, 0), jnp.minimum(coeffs, 0)
  coeffs_x = positive * blend(y.lower, y.upper) + negative * blend(
    y.upper, y.lower
  )
  coeffs_y = coeffs * blend(x.lower, x.upper)
  bias = _masked_inner_product(
    positive, -blend(x.lower * y.lower, x.upper * y.upper)
  ) + _masked_inner_product(
    negative, -blend(x.lower * y.upper, x.upper * y.lower)
  )
  return {0: coeffs_x, 1: coeffs_y}, bias


def multiply(eqn: Eqn, args: Sequence[Any], coeffs: jax.Array, alpha=None):
  """mul: affine with one bounded factor, else `product`."""
  if all(_is_bounded(a) for a in args):
    return product(eqn, args, coeffs, alpha)
  return affine(eqn, args, coeffs, alpha)


def is_product(eqn: Eqn, is_bounded: Callable[[Any], bool]) -> bool:
  """Whether ``eqn`` multiplies two bounded values (``is_bounded`` of atoms)."""
  return eqn.name == "mul" and all(is_bounded(a) for a in eqn.inputs)


def is_nonlinear(eqn: Eqn, is_bounded: Callable[[Any], bool]) -> bool:
  """Whether CROWN relaxes ``eqn`` (rather than pulling A through exactly)."""
  return eqn.name in NONLINEAR_PRIMITIVES or is_product(eqn, is_bounded)


def smooth_activation(
  eqn: Eqn, args: Sequence[Any], coeffs: jax.Array, alpha=None
):
  """tanh, sigmoid, exp, log, x³, ...: `relaxations.smooth_relaxation`'s lines."""
  del alpha  # fixed lines; α-CROWN optimizes the slopes of max and min only
  (x,) = args
  box = as_interval(x)
  fn = lambda v: evaluate_concrete(eqn, [v])[0]
  derivative = lambda v: jax.jvp(fn, (v,), (jnp.ones_like(v),))[1]
  (fallback,) = ibp_rules.RULES[eqn.name](eqn, [box])  # exact at zero width
  relax = relaxations.smooth_relaxation(
    fn,
    derivative,
    relaxations.curvature(eqn.name, eqn.params),
    box.lower,
    box.upper,
    fallback=(fallback.lower, fallback.upper),
  )
  # Offsets may be infinite (log at 0) where a zero coefficient ignores them.
  coeffs_in, bias = _pull_through(relax, coeffs, finite_offsets=False)
  return {0: coeffs_in}, bias


SMOOTH_PRIMITIVES = frozenset(relaxations.SMOOTH_CURVATURE) | {
  "integer_pow",
  "square",
}
NONLINEAR_PRIMITIVES = (
  frozenset({"max", "min", "reduce_window_max", "reduce_max", "leaky_relu"})
  | SMOOTH_PRIMITIVES
)

RULES: dict[str, LinearRule] = {name: affine for name in AFFINE_PRIMITIVES}
RULES.update(
  {
    "max": relu_like,
    "min": min_like,
    "leaky_relu": leaky,  # `leaky_relu.LeakyRelu`
    "reduce_window_max": max_pool,
    "reduce_max": max_pool,
  }
)
RULES.update({name: smooth_activation for name in SMOOTH_PRIMITIVES})
RULES["select_n"] = select
RULES["mul"] = multiply
# Rules that take one coefficient array per output, as a tuple.
MULTI_OUTPUT_PRIMITIVES = frozenset({"split"})
RULES["split"] = split
