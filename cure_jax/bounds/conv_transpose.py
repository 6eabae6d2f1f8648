"""Aᵀ through a convolution, fast also where the pass is differentiated.

A backward pass pulls its coefficients through y = L x = conv(x, k) by the
transposed convolution Lᵀ (the vector-Jacobian product). α-CROWN
differentiates the passes with respect to its slopes inside its
optimization loop, and JAX states the transposes of a convolution with the
kernel's input and output features swapped (kernel layout "HWOI" for a
flax "HWIO" kernel). XLA:CPU rewrites such a convolution to the HWIO layout
outside loops, but inside a loop body runs it on a generic path: on the
small MNIST CNN's 1600-row pass, 0.6 s per step instead of 0.04 s.

`pullback` states both directions with the features in HWIO order:

* Lᵀ is the VJP of the convolution whose kernel has its feature axes
  swapped in the data (and in the dimension numbers, so the function is
  the same): JAX's transpose of it reads the kernel as HWIO again;
* the VJP of Lᵀ (what differentiating the pass needs) is L itself, the
  forward convolution with the original kernel, by a custom VJP; the
  kernel's cotangent (a bound differentiated with respect to the weights,
  as in training) is the kernel gradient of L: <g, Lᵀc> = <L g, c>.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax


def _swapped_features(kernel: jax.Array, numbers) -> tuple:
  """The kernel with its output and input feature axes swapped in the
  data, and dimension numbers that read it as the same convolution."""
  lhs_spec, rhs_spec, out_spec = numbers
  out_axis, in_axis = rhs_spec[0], rhs_spec[1]
  swapped = jnp.swapaxes(kernel, out_axis, in_axis)
  spec = (in_axis, out_axis) + tuple(rhs_spec[2:])
  return swapped, lax.ConvDimensionNumbers(lhs_spec, spec, out_spec)


def pullback(
  primitive, params: dict, kernel: jax.Array, x_shape, dtype
) -> Callable[[jax.Array], jax.Array]:
  """c ↦ Lᵀc for L x = ``primitive.bind(x, kernel, **params)``.

  Args:
    primitive: ``lax.conv_general_dilated_p`` (a traced equation's).
    params: its parameters.
    kernel: the kernel (not bounded; may be traced, or differentiated).
    x_shape: the shape of x, whose leading axis is the batch: Lᵀ takes c
      of L's output shape with any leading size and keeps it.
    dtype: the coefficients' dtype.
  """
  numbers = params["dimension_numbers"]
  batch_axis = numbers.lhs_spec[0]
  if batch_axis != 0 or numbers.out_spec[0] != 0:
    raise ValueError(f"pullback: batch must be axis 0, got {numbers}")

  def forward(x, k):
    return primitive.bind(x, k, **params)

  def transposed(c, k):
    swapped, swapped_numbers = _swapped_features(k, numbers)
    swapped_params = dict(params, dimension_numbers=swapped_numbers)
    shape = (c.shape[0],) + tuple(x_shape[1:])
    (pulled,) = jax.linear_transpose(
      lambda x: primitive.bind(x, swapped, **swapped_params),
      jax.ShapeDtypeStruct(shape, dtype),
    )(c)
    return pulled

  @jax.custom_vjp
  def pull(c, k):
    return transposed(c, k)

  def pull_forward(c, k):
    return transposed(c, k), (c, k)

  def pull_backward(residuals, g):
    c, k = residuals
    _, kernel_vjp = jax.vjp(lambda k: forward(g, k), k)
    (k_bar,) = kernel_vjp(c)
    return forward(g, k), k_bar

  pull.defvjp(pull_forward, pull_backward)
  return lambda c: pull(c, kernel)
