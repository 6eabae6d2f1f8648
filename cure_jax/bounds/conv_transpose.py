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

A convolution that shrinks the height (a VALID 4×4 one, 13×13 → 10×10)
has a transpose that XLA:CPU states as a convolution over its input padded
by the kernel's extent, zeros multiplied: 2.2 G multiply-adds for 1.3 G of
work on the small CNN's 1600-row pass. There Lᵀ is computed by kernel rows
instead (`_transposed_by_rows`): one transpose of a one-row convolution,
the kernel's rows stacked as features, then each row's share placed and
summed. On a 2-core CPU that pass took 23 against 37 ms, and CROWN's whole
call at batch 8 18% less (`python -m cure_jax.benchmarks.conv_transpose`,
docs/verifier-benchmark.md); convolutions that keep the height (SAME
padding) keep JAX's statement, which was about as fast there.
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
    shape = (c.shape[0],) + tuple(x_shape[1:])
    how = statement(params, k.shape, shape, c.shape)
    if how == "taps":
      return _transposed_by_taps(params, c, k, shape)
    if how == "rows":
      return _transposed_by_rows(primitive, params, c, k, shape, dtype)
    return _transposed(primitive, params, c, k, shape, dtype)

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


def _transposed(primitive, params, c, k, shape, dtype) -> jax.Array:
  """Lᵀc by JAX's transpose of the convolution with swapped features."""
  swapped, swapped_numbers = _swapped_features(k, params["dimension_numbers"])
  swapped_params = dict(params, dimension_numbers=swapped_numbers)
  (pulled,) = jax.linear_transpose(
    lambda x: primitive.bind(x, swapped, **swapped_params),
    jax.ShapeDtypeStruct(shape, dtype),
  )(c)
  return pulled


_NHWC, _HWIO = (0, 3, 1, 2), (3, 2, 0, 1)


def _plain_2d(params: dict) -> bool:
  """A 2-D NHWC convolution by an HWIO kernel, without input dilation or
  feature or batch groups."""
  numbers = params["dimension_numbers"]
  return (
    tuple(numbers.lhs_spec) == _NHWC
    and tuple(numbers.out_spec) == _NHWC
    and tuple(numbers.rhs_spec) == _HWIO
    and tuple(params["lhs_dilation"]) == (1, 1)
    and params["feature_group_count"] == 1
    and params["batch_group_count"] == 1
  )


def _taps_split(params: dict, kernel_shape) -> bool:
  """Whether `_transposed_by_taps` applies and pays: a plain 2-D
  convolution whose kernel taps per output feature (kh·kw·C_in) are at
  most half its output features, so that the columns are at most half the
  coefficients' size (a first layer, C_in = 1, with more features than
  taps: CNN7's 3×3 into 64, 3.6× faster; at 16 taps into 16 features, the
  small CNN's, neither statement won on both of its passes)."""
  kh, kw, cin, cout = kernel_shape
  return _plain_2d(params) and 2 * kh * kw * cin <= cout


def _rows_split(params: dict, kernel_shape, x_shape, y_shape) -> bool:
  """Whether `_transposed_by_rows` applies and pays: a plain 2-D
  convolution by a kernel of more than one row that shrinks the height by
  more than its stride (padded less than the kernel's extent), so that the
  full transpose has zero rows."""
  return (
    y_shape[1] * params["window_strides"][0] < x_shape[1]
    and _plain_2d(params)
    and kernel_shape[0] > 1
  )


def statement(params: dict, kernel_shape, x_shape, y_shape) -> str:
  """How `pullback` states Lᵀ: "taps" (`_transposed_by_taps`), "rows"
  (`_transposed_by_rows`) or "jax" (`_transposed`)."""
  if _taps_split(params, kernel_shape):
    return "taps"
  if _rows_split(params, kernel_shape, x_shape, y_shape):
    return "rows"
  return "jax"


def _placed(q, axis: int, low: int, stride: int, size: int) -> jax.Array:
  """q's entries o along ``axis`` at positions low + stride·o of ``size``,
  zeros elsewhere (a negative ``low`` or remainder crops): a strided pad."""
  high = size - (low + (q.shape[axis] - 1) * stride + 1)
  config = [(0, 0, 0)] * q.ndim
  config[axis] = (low, high, stride - 1)
  return lax.pad(q, jnp.zeros((), q.dtype), config)


def _transposed_by_taps(params, c, k, shape) -> jax.Array:
  """Lᵀc as one matrix product and a sum over the kernel's taps (col2im).

  With strides (s, t), rhs dilations (d, e) and low paddings (p, q),
  Lᵀc[i, j] = Σ_{a,b} P_ab[o, r] at i = s·o + d·a − p, j = t·r + e·b − q,
  where P_ab[o, r] = Σ_f k[a, b, :, f] c[o, r, f]: the product of c's
  [n·o·r, C_out] rows with the kernel as a [C_out, kh·kw·C_in] matrix,
  then each tap's share placed (a strided pad per spatial axis) and
  summed. Exact work, no zeros multiplied; the columns P are at most
  half of c where 2·kh·kw·C_in <= C_out (`_taps_split`). XLA:CPU states
  the transpose of a first layer (C_in = 1) as a convolution with one
  output feature: on CNN7's 3×3 first layer it ran 3.6× slower at 576
  rows (`python -m cure_jax.benchmarks.conv_transpose`).
  """
  kh, kw, _, _ = k.shape
  (stride_h, stride_w), (dil_h, dil_w) = (
    params["window_strides"],
    params["rhs_dilation"],
  )
  (pad_h, _), (pad_w, _) = params["padding"]
  columns = jnp.einsum(
    "nhwf,abif->nhwabi",
    c,
    k,
    precision=params.get("precision"),
    preferred_element_type=params.get("preferred_element_type"),
  )
  total = None
  for a in range(kh):
    for b in range(kw):
      placed = _placed(
        columns[:, :, :, a, b], 1, dil_h * a - pad_h, stride_h, shape[1]
      )
      placed = _placed(placed, 2, dil_w * b - pad_w, stride_w, shape[2])
      total = placed if total is None else total + placed
  return total


def _transposed_by_rows(primitive, params, c, k, shape, dtype) -> jax.Array:
  """Lᵀc as a one-row transposed convolution and a sum over kernel rows.

  With strides (s, t), rhs dilations (d, e) and low paddings (p, q),
  Lᵀc[i, j] = Σ_{a,b,o,r : s·o + d·a − p = i, t·r + e·b − q = j} k[a, b] c[o, r].
  For each kernel row a, Q_a[o, j] = Σ_{b,r} k[a, b] c[o, r] is the
  transpose of a convolution along the width only, so one such transpose
  with the kh kernel rows stacked as features computes every Q_a; each Q_a
  then lands on input rows i = s·o + d·a − p (a strided, shifted pad).
  XLA:CPU states the full transpose as a convolution over the input padded
  by the kernel's extent, multiplying its zeros; this form leaves only the
  width's zeros.
  """
  kh, kw, cin, cout = k.shape
  (stride_h, stride_w), (dil_h, dil_w) = (
    params["window_strides"],
    params["rhs_dilation"],
  )
  (pad_h, _), pad_w = params["padding"]
  rows_kernel = jnp.transpose(k, (1, 0, 2, 3)).reshape(1, kw, kh * cin, cout)
  rows_params = dict(
    params,
    window_strides=(1, stride_w),
    padding=((0, 0), tuple(pad_w)),
    rhs_dilation=(1, dil_w),
  )
  n, out_h = c.shape[0], c.shape[1]
  rows_shape = (n, out_h, shape[2], kh * cin)
  q = _transposed(primitive, rows_params, c, rows_kernel, rows_shape, dtype)
  q = q.reshape((n, out_h, shape[2], kh, cin))
  total = None
  for a in range(kh):
    placed = _placed(q[:, :, :, a], 1, dil_h * a - pad_h, stride_h, shape[1])
    total = placed if total is None else total + placed
  return total
