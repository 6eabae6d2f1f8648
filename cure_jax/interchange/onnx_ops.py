"""ONNX operators as JAX functions built from bound-rule primitives.

Each entry of `OPERATORS` maps an ONNX ``op_type`` to an `Operator`: the
function ``fn(inputs, attrs) -> outputs`` and the attributes it understands
(any other attribute is an error, never ignored). ``inputs`` holds, per ONNX
input, a numpy array (a value known when the graph is loaded: an integer
initializer, a ``Constant``, a ``Shape``), a JAX array (anything computed from
the network's input or from its float initializers, the parameters) or None
(an omitted optional input).

Every operator traces to primitives that `cure_jax.bounds` has rules for:
``dot_general`` and ``conv_general_dilated`` (Gemm, MatMul, Conv,
ConvTranspose), ``add``/``sub``/``mul``/``div`` by parameters, ``max``/``min``
with a constant (Relu, Clip), the fused leaky ReLU, ``logistic``, ``tanh``,
``reduce_window_max``/``reduce_window_sum`` (pooling) and the structural
ones (reshape, transpose, slice, rev, pad, concatenate, gather). Matrix
products and convolutions run at ``Precision.HIGHEST`` so that the imported
function is exact float32 arithmetic on every backend.

Operands that fix a shape (Reshape's shape, Slice's starts, Pad's pads, ...)
must be known at load time; shape arithmetic on such values (Shape, Gather,
Concat, Cast, Unsqueeze, ...) is evaluated with numpy, as ONNX exporters
emit it.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HIGHEST = lax.Precision.HIGHEST


class Operator(NamedTuple):
  """An ONNX operator: ``fn(inputs, attrs) -> list of outputs``."""

  fn: Callable[[list[Any], dict[str, Any]], list[Any]]
  attributes: frozenset[str]
  outputs: int = 1  # how many outputs the function computes


class OperatorError(ValueError):
  """An operator met a value or attribute it does not support."""


def is_static(value) -> bool:
  return isinstance(value, (np.ndarray, np.generic))


def _xp(*values):
  """numpy when every given operand is known at load time, else jax.numpy."""
  present = [v for v in values if v is not None]
  return np if all(is_static(v) for v in present) else jnp


def static(value, what: str) -> np.ndarray:
  """``value`` as a numpy array, or an error if it depends on the input."""
  if value is None or not is_static(value):
    raise OperatorError(
      f"{what} must be known when the graph is loaded (an integer "
      "initializer, a Constant or shape arithmetic on them); here it is "
      "computed from the network's input or float parameters."
    )
  return np.asarray(value)


def _ints(value, what: str) -> list[int]:
  return [int(v) for v in static(value, what).reshape(-1)]


def _axis(axis: int, rank: int) -> int:
  if not -rank <= axis < rank:
    raise OperatorError(f"axis {axis} is out of range for rank {rank}.")
  return axis % rank


# Elementwise arithmetic -----------------------------------------------------


def _binary(name: str) -> Callable:
  def fn(inputs, attrs):
    del attrs
    a, b = inputs
    xp = _xp(a, b)
    if (
      name == "Div"
      and xp is np
      and np.issubdtype(np.result_type(a, b), np.integer)
    ):
      return [np.trunc(a / b).astype(np.result_type(a, b))]  # ONNX truncates
    op = {
      "Add": xp.add,
      "Sub": xp.subtract,
      "Mul": xp.multiply,
      "Div": xp.divide,
    }[name]
    return [op(a, b)]

  return fn


def _neg(inputs, attrs):
  del attrs
  return [-inputs[0]]


def _identity(inputs, attrs):
  del attrs
  return [inputs[0]]


def _dropout(inputs, attrs):
  """Dropout at inference: the identity (a training_mode input must be 0)."""
  del attrs
  if len(inputs) > 2 and inputs[2] is not None:
    if bool(static(inputs[2], "Dropout's training_mode")):
      raise OperatorError("Dropout in training mode is random; export in eval.")
  return [inputs[0]]


def _cast(inputs, attrs):
  import onnx  # pylint: disable=g-import-not-at-top

  (x,) = inputs[:1]
  dtype = onnx.helper.tensor_dtype_to_np_dtype(attrs["to"])
  if is_static(x):
    return [np.asarray(x).astype(dtype)]
  if not np.issubdtype(dtype, np.floating):
    raise OperatorError(
      f"Cast of a value computed from the input to {dtype} would round it; "
      "only casts between float types are supported there."
    )
  return [x.astype(dtype)]


# Activations -----------------------------------------------------------------


def _relu(inputs, attrs):
  del attrs
  return [jax.nn.relu(inputs[0])]


def _leaky_relu(inputs, attrs):
  return [jax.nn.leaky_relu(inputs[0], float(attrs.get("alpha", 0.01)))]


def _sigmoid(inputs, attrs):
  del attrs
  return [jax.nn.sigmoid(inputs[0])]


def _tanh(inputs, attrs):
  del attrs
  return [jnp.tanh(inputs[0])]


def _clip(inputs, attrs):
  x = inputs[0]
  low = inputs[1] if len(inputs) > 1 else attrs.get("min")
  high = inputs[2] if len(inputs) > 2 else attrs.get("max")
  if low is not None:
    x = jnp.maximum(x, low)
  if high is not None:
    x = jnp.minimum(x, high)
  return [x]


# Affine layers ---------------------------------------------------------------


def _gemm(inputs, attrs):
  """Y = alpha · A' B' + beta · C, A' = Aᵀ if transA, B' = Bᵀ if transB."""
  a, b = inputs[:2]
  c = inputs[2] if len(inputs) > 2 else None
  if attrs.get("transA", 0):
    a = a.T
  if attrs.get("transB", 0):
    b = b.T
  y = jnp.matmul(a, b, precision=HIGHEST)
  alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
  if alpha != 1.0:
    y = y * alpha
  if c is not None:
    y = y + (c if beta == 1.0 else beta * c)
  return [y]


def _matmul(inputs, attrs):
  del attrs
  a, b = inputs
  if _xp(a, b) is np:
    return [np.matmul(a, b)]
  return [jnp.matmul(a, b, precision=HIGHEST)]


def _spatial_attrs(attrs, spatial: int, kernel: Sequence[int]):
  strides = list(attrs.get("strides", [1] * spatial))
  dilations = list(attrs.get("dilations", [1] * spatial))
  if "kernel_shape" in attrs and list(attrs["kernel_shape"]) != list(kernel):
    raise OperatorError(
      f"kernel_shape {attrs['kernel_shape']} differs from the weight's "
      f"spatial shape {list(kernel)}."
    )
  return strides, dilations


def _pads(attrs, sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
  """Per spatial axis (begin, end) padding from ``pads`` or ``auto_pad``."""
  spatial = len(sizes)
  auto_pad = attrs.get("auto_pad", "NOTSET")
  if auto_pad == "NOTSET":
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    return list(zip(pads[:spatial], pads[spatial:]))
  if auto_pad == "VALID":
    return [(0, 0)] * spatial
  if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
    raise OperatorError(f"unknown auto_pad {auto_pad!r}.")
  result = []
  for size, k, s, d in zip(sizes, kernel, strides, dilations):
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    small, large = total // 2, total - total // 2
    result.append(
      (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    )
  return result


def _dimension_numbers(rank: int) -> lax.ConvDimensionNumbers:
  """N C spatial... for input, output and O I spatial... for the kernel."""
  axes = tuple(range(rank))
  return lax.ConvDimensionNumbers(axes, axes, axes)


def _bias(y, bias, spatial: int):
  if bias is None:
    return y
  return y + bias.reshape((1, -1) + (1,) * spatial)


def _conv(inputs, attrs):
  x, w = inputs[:2]
  bias = inputs[2] if len(inputs) > 2 else None
  spatial = w.ndim - 2
  kernel = w.shape[2:]
  strides, dilations = _spatial_attrs(attrs, spatial, kernel)
  pads = _pads(attrs, x.shape[2:], kernel, strides, dilations)
  y = lax.conv_general_dilated(
    x,
    w,
    window_strides=strides,
    padding=pads,
    rhs_dilation=dilations,
    dimension_numbers=_dimension_numbers(x.ndim),
    feature_group_count=int(attrs.get("group", 1)),
    precision=HIGHEST,
  )
  return [_bias(y, bias, spatial)]


def _conv_transpose(inputs, attrs):
  """The gradient of a convolution: a convolution of the input dilated by
  the strides with the flipped kernel, its in/out channels swapped per group.
  Explicit ``pads`` (and ``output_padding``) only."""
  x, w = inputs[:2]
  bias = inputs[2] if len(inputs) > 2 else None
  if attrs.get("auto_pad", "NOTSET") != "NOTSET" or "output_shape" in attrs:
    raise OperatorError(
      "ConvTranspose with auto_pad or output_shape is not supported; export "
      "it with explicit pads (and output_padding)."
    )
  spatial = w.ndim - 2
  kernel = w.shape[2:]
  strides, dilations = _spatial_attrs(attrs, spatial, kernel)
  pads = _pads(attrs, x.shape[2:], kernel, strides, dilations)
  extra = list(attrs.get("output_padding", [0] * spatial))
  groups = int(attrs.get("group", 1))
  c_in, c_out_per_group = w.shape[:2]
  grouped = w.reshape((groups, c_in // groups, c_out_per_group) + kernel)
  swapped = jnp.swapaxes(grouped, 1, 2).reshape(
    (groups * c_out_per_group, c_in // groups) + kernel
  )
  flipped = jnp.flip(swapped, axis=tuple(range(2, 2 + spatial)))
  padding = [
    (d * (k - 1) - lo, d * (k - 1) - hi + e)
    for k, d, (lo, hi), e in zip(kernel, dilations, pads, extra)
  ]
  y = lax.conv_general_dilated(
    x,
    flipped,
    window_strides=[1] * spatial,
    padding=padding,
    lhs_dilation=strides,
    rhs_dilation=dilations,
    dimension_numbers=_dimension_numbers(x.ndim),
    feature_group_count=groups,
    precision=HIGHEST,
  )
  return [_bias(y, bias, spatial)]


def _batch_norm(inputs, attrs):
  """Inference batch normalization: (x − mean) · scale / √(var + ε) + B."""
  if attrs.get("training_mode", 0):
    raise OperatorError("BatchNormalization in training mode; export in eval.")
  if attrs.get("spatial", 1) != 1:
    raise OperatorError("BatchNormalization with spatial=0 is not supported.")
  x, scale, shift, mean, var = inputs
  shape = (1, -1) + (1,) * (x.ndim - 2)
  multiplier = scale / jnp.sqrt(var + float(attrs.get("epsilon", 1e-5)))
  return [
    (x - mean.reshape(shape)) * multiplier.reshape(shape) + shift.reshape(shape)
  ]


# Pooling ---------------------------------------------------------------------


def _pool_geometry(x, attrs):
  """(window, strides, dilations, explicit pads, extra end pads of ceil_mode)."""
  kernel = list(attrs["kernel_shape"])
  spatial = len(kernel)
  strides = list(attrs.get("strides", [1] * spatial))
  dilations = list(attrs.get("dilations", [1] * spatial))
  pads = _pads(attrs, x.shape[2:], kernel, strides, dilations)
  extra = []
  for size, k, s, d, (lo, hi) in zip(
    x.shape[2:], kernel, strides, dilations, pads
  ):
    span = size + lo + hi - ((k - 1) * d + 1)
    out = span // s + 1
    if attrs.get("ceil_mode", 0):
      out = -(-span // s) + 1
      if (out - 1) * s >= size + lo:  # the last window would start in padding
        out -= 1
    extra.append(max((out - 1) * s + (k - 1) * d + 1 - (size + lo + hi), 0))
  return kernel, strides, dilations, pads, extra


def _reduce_window(x, init, op, kernel, strides, dilations, padding):
  return lax.reduce_window(
    x,
    init,
    op,
    (1, 1) + tuple(kernel),
    (1, 1) + tuple(strides),
    ((0, 0), (0, 0)) + tuple(padding),
    window_dilation=(1, 1) + tuple(dilations),
  )


def _max_pool(inputs, attrs):
  (x,) = inputs  # storage_order only orders the Indices output, never computed
  kernel, strides, dilations, pads, extra = _pool_geometry(x, attrs)
  padding = [(lo, hi + e) for (lo, hi), e in zip(pads, extra)]
  return [
    _reduce_window(x, -jnp.inf, lax.max, kernel, strides, dilations, padding)
  ]


def _average_pool(inputs, attrs):
  """Window sums divided by the count of the window's elements: input
  elements only, or also explicit padding with count_include_pad (never the
  extra end padding of ceil_mode)."""
  (x,) = inputs
  kernel, strides, dilations, pads, extra = _pool_geometry(x, attrs)
  padding = [(lo, hi + e) for (lo, hi), e in zip(pads, extra)]
  total = _reduce_window(x, 0.0, lax.add, kernel, strides, dilations, padding)
  include = bool(attrs.get("count_include_pad", 0))
  ones = np.pad(
    np.ones(x.shape[2:], np.float64), pads, constant_values=float(include)
  )
  ones = np.pad(ones, [(0, e) for e in extra])
  counts = _window_sums(ones, kernel, strides, dilations)
  return [total / counts.astype(np.float32)]


def _window_sums(array, kernel, strides, dilations) -> np.ndarray:
  """Sums of every (dilated) window of a numpy array, strided, no padding."""
  result = array
  for axis, (k, s, d) in enumerate(zip(kernel, strides, dilations)):
    size = result.shape[axis]
    out = (size - ((k - 1) * d + 1)) // s + 1
    picks = [
      np.take(result, np.arange(out) * s + j * d, axis=axis) for j in range(k)
    ]
    result = np.sum(picks, axis=0)
  return result


def _global_average_pool(inputs, attrs):
  del attrs
  (x,) = inputs
  return [jnp.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


def _global_max_pool(inputs, attrs):
  del attrs
  (x,) = inputs
  return [jnp.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


# Shapes ----------------------------------------------------------------------


def _flatten(inputs, attrs):
  (x,) = inputs
  axis = int(attrs.get("axis", 1))
  axis = axis % x.ndim if x.ndim else 0
  rows = math.prod(x.shape[:axis])
  return [x.reshape((rows, math.prod(x.shape[axis:])))]


def _reshape(inputs, attrs):
  x, shape = inputs
  shape = _ints(shape, "Reshape's shape")
  if not attrs.get("allowzero", 0):
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
  return [x.reshape(shape)]


def _transpose(inputs, attrs):
  (x,) = inputs
  perm = attrs.get("perm", list(range(x.ndim))[::-1])
  return [_xp(x).transpose(x, perm)]


def _squeeze(inputs, attrs):
  x = inputs[0]
  axes = attrs.get("axes")
  if axes is None and len(inputs) > 1 and inputs[1] is not None:
    axes = _ints(inputs[1], "Squeeze's axes")
  if axes is None:
    axes = [i for i, s in enumerate(x.shape) if s == 1]
  return [_xp(x).squeeze(x, tuple(_axis(a, x.ndim) for a in axes))]


def _unsqueeze(inputs, attrs):
  x = inputs[0]
  axes = attrs.get("axes")
  if axes is None:
    axes = _ints(inputs[1], "Unsqueeze's axes")
  rank = x.ndim + len(axes)
  return [_xp(x).expand_dims(x, tuple(sorted(_axis(a, rank) for a in axes)))]


def _concat(inputs, attrs):
  present = [v for v in inputs if v is not None]
  axis = _axis(int(attrs["axis"]), np.ndim(present[0]))
  return [_xp(*present).concatenate(present, axis=axis)]


def _slice(inputs, attrs):
  x = inputs[0]
  if "starts" in attrs:  # opset < 10
    starts, ends = list(attrs["starts"]), list(attrs["ends"])
    axes = list(attrs.get("axes", range(len(starts))))
    steps = [1] * len(starts)
  else:
    starts = _ints(inputs[1], "Slice's starts")
    ends = _ints(inputs[2], "Slice's ends")
    optional = lambda i: inputs[i] if len(inputs) > i else None
    axes = (
      _ints(optional(3), "Slice's axes")
      if optional(3) is not None
      else list(range(len(starts)))
    )
    steps = (
      _ints(optional(4), "Slice's steps")
      if optional(4) is not None
      else [1] * len(starts)
    )
  index = [slice(None)] * x.ndim
  for start, end, axis, step in zip(starts, ends, axes, steps):
    if step == 0:
      raise OperatorError("Slice with a step of 0.")
    index[_axis(axis, x.ndim)] = slice(start, end, step)  # Python clamps alike
  return [x[tuple(index)]]


def _pad(inputs, attrs):
  x = inputs[0]
  mode = attrs.get("mode", "constant")
  if "pads" in attrs:  # opset < 11
    pads, value = list(attrs["pads"]), float(attrs.get("value", 0.0))
    axes = list(range(x.ndim))
  else:
    pads = _ints(inputs[1], "Pad's pads")
    value = inputs[2] if len(inputs) > 2 and inputs[2] is not None else 0.0
    axes = (
      [_axis(a, x.ndim) for a in _ints(inputs[3], "Pad's axes")]
      if len(inputs) > 3 and inputs[3] is not None
      else list(range(x.ndim))
    )
  widths = [(0, 0)] * x.ndim
  for i, axis in enumerate(axes):
    widths[axis] = (pads[i], pads[i + len(axes)])
  if mode == "constant":
    value = jnp.asarray(value, x.dtype).reshape(())
    return [lax.pad(x, value, [(lo, hi, 0) for lo, hi in widths])]
  if any(lo < 0 or hi < 0 for lo, hi in widths):
    raise OperatorError(f"Pad in mode {mode!r} with negative pads.")
  if mode not in ("reflect", "edge", "wrap"):
    raise OperatorError(f"unknown Pad mode {mode!r}.")
  return [jnp.pad(x, widths, mode=mode)]


def _constant(inputs, attrs):
  del inputs
  import onnx  # pylint: disable=g-import-not-at-top

  if "value" in attrs:
    return [onnx.numpy_helper.to_array(attrs["value"])]
  for key, dtype in (
    ("value_float", np.float32),
    ("value_floats", np.float32),
    ("value_int", np.int64),
    ("value_ints", np.int64),
  ):
    if key in attrs:
      return [np.asarray(attrs[key], dtype)]
  raise OperatorError(
    f"Constant with {sorted(attrs)}: only value, value_float(s) and "
    "value_int(s) are supported."
  )


def _shape(inputs, attrs):
  (x,) = inputs
  shape = np.asarray(np.shape(x), np.int64)
  return [shape[attrs.get("start", 0) : attrs.get("end", len(shape))]]


def _gather(inputs, attrs):
  data, indices = inputs
  indices = static(indices, "Gather's indices")
  axis = _axis(int(attrs.get("axis", 0)), np.ndim(data))
  indices = np.where(indices < 0, indices + np.shape(data)[axis], indices)
  return [_xp(data).take(data, indices, axis=axis)]


_SPATIAL = {"auto_pad", "dilations", "kernel_shape", "pads", "strides"}

OPERATORS: dict[str, Operator] = {
  "Add": Operator(_binary("Add"), frozenset()),
  "Sub": Operator(_binary("Sub"), frozenset()),
  "Mul": Operator(_binary("Mul"), frozenset()),
  "Div": Operator(_binary("Div"), frozenset()),
  "Neg": Operator(_neg, frozenset()),
  "Identity": Operator(_identity, frozenset()),
  "Dropout": Operator(_dropout, frozenset({"seed", "ratio"})),
  "Cast": Operator(_cast, frozenset({"to", "saturate"})),
  "Relu": Operator(_relu, frozenset()),
  "LeakyRelu": Operator(_leaky_relu, frozenset({"alpha"})),
  "Sigmoid": Operator(_sigmoid, frozenset()),
  "Tanh": Operator(_tanh, frozenset()),
  "Clip": Operator(_clip, frozenset({"min", "max"})),
  "Gemm": Operator(_gemm, frozenset({"alpha", "beta", "transA", "transB"})),
  "MatMul": Operator(_matmul, frozenset()),
  "Conv": Operator(_conv, frozenset(_SPATIAL | {"group"})),
  "ConvTranspose": Operator(
    _conv_transpose,
    frozenset(_SPATIAL | {"group", "output_padding", "output_shape"}),
  ),
  "BatchNormalization": Operator(
    _batch_norm, frozenset({"epsilon", "momentum", "training_mode", "spatial"})
  ),
  "MaxPool": Operator(
    _max_pool, frozenset(_SPATIAL | {"ceil_mode", "storage_order"})
  ),
  "AveragePool": Operator(
    _average_pool, frozenset(_SPATIAL | {"ceil_mode", "count_include_pad"})
  ),
  "GlobalAveragePool": Operator(_global_average_pool, frozenset()),
  "GlobalMaxPool": Operator(_global_max_pool, frozenset()),
  "Flatten": Operator(_flatten, frozenset({"axis"})),
  "Reshape": Operator(_reshape, frozenset({"allowzero"})),
  "Transpose": Operator(_transpose, frozenset({"perm"})),
  "Squeeze": Operator(_squeeze, frozenset({"axes"})),
  "Unsqueeze": Operator(_unsqueeze, frozenset({"axes"})),
  "Concat": Operator(_concat, frozenset({"axis"})),
  "Slice": Operator(_slice, frozenset({"starts", "ends", "axes"})),
  "Pad": Operator(_pad, frozenset({"mode", "pads", "value"})),
  "Constant": Operator(
    _constant,
    frozenset(
      {"value", "value_float", "value_floats", "value_int", "value_ints"}
    ),
  ),
  "Shape": Operator(_shape, frozenset({"start", "end"})),
  "Gather": Operator(_gather, frozenset({"axis"})),
}
