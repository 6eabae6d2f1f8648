"""`midpoint(x)`: x itself, or under a bound transform the centre of x's bounds.

Some computations inside a model are *statistics* of a tensor rather than
functions of one input: BatchNorm's batch moments are the clearest case.
Bounding them as functions of the input set (the interval of a mean, of a
variance) is loose and not what certified training wants; auto_LiRPA's IBP,
run without a clean forward pass, instead takes BatchNorm's moments from the
midpoints (l + u) / 2 of its input's bounds (`BoundBatchNormalization`). This
primitive makes that choice explicit and available to any function:

* on arrays (and under ``jit``, ``grad``, ``vmap``) it is the identity;
* under a bound transform its output is the concrete array (l + u) / 2 of its
  operand's bounds — a value, not a set — so whatever is computed from it
  (e.g. moments) is a constant of the bounded pass, and differentiable in
  the parameters through the bounds' centre.

So ``batch_moments(midpoint(x))`` in a train-mode BatchNorm is the batch's
moments on data, and the moments of the bounded batch's midpoints when the
model is bounded with ``train=True``.
"""

import jax
import jax.extend as jex
from jax.interpreters import ad, batching, mlir

midpoint_p = jex.core.Primitive("midpoint")
midpoint_p.def_impl(lambda x: x)
midpoint_p.def_abstract_eval(lambda x: x)
ad.defjvp(midpoint_p, lambda tangent, x: tangent)
batching.defvectorized(midpoint_p)
mlir.register_lowering(
  midpoint_p, mlir.lower_fun(lambda x: x, multiple_results=False)
)


def midpoint(x: jax.Array) -> jax.Array:
  """``x`` on arrays; the centre of its bounds under a bound transform."""
  return midpoint_p.bind(x)


def ibp_rule(eqn, args):
  """[(l + u) / 2] of the operand's `Interval`: a concrete value, not a set."""
  del eqn
  (bounds,) = args
  return [bounds.center]
