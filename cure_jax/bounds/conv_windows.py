"""Backward passes through convolution chains on windows (patches).

A row of a hidden layer's CROWN pass bounds one neuron at spatial position
(i, j). Pulled back through a convolution, its coefficients are non-zero
only on that neuron's receptive field: a K_h × K_w window of the layer
below, then ((K_h − 1)·s + K'_h) × ... below the next convolution. Carried
as a dense [2R, B, H, W, C] array (the generic `backward` pass), almost all
of a row's coefficients are zeros, and every ReLU relaxation, bias
reduction and transposed convolution pays for them. Here a row's
coefficients are a window ``values [2R, B, h, w, C]`` at the origin (top-left
position, in the value's spatial coordinates) of its neuron's position —
auto_LiRPA's "patches" mode (Xu et al., NeurIPS 2020) — with the bounds the
dense pass gives, at the cost of the windows only. Rows at one position share
their windows' origin, so what the rules read from a layer (intervals,
relaxations, scales) is cut into windows once per position, not per row.

A pass from a value ``atom`` is windowed along a chain of equations with one
bounded operand each (so the chain is all of ``atom``'s dependence on the
input sets), read backwards:

* a convolution applied alike to every example (NHWC / HWIO / NHWC, no
  input dilation; feature groups allowed): the vector-Jacobian product of a
  VALID convolution over the input window
  (h_in = (h − 1)·s + (K − 1)·d + 1), origin_in = s·origin − pad_lo;
* an elementwise affine operation with constants (bias, BatchNorm in eval
  mode, normalization): A ⊙ scale over the window, bias += <A, offset>;
* max(x, c) for a scalar constant c (ReLU): the CROWN relaxation
  (`linear_rules.relu_like`), computed on the windows of x's interval (and
  of the row's α-CROWN slopes, when given).

Window entries outside the image (a convolution's zero padding) are kept at
zero. At an input set the bound is concretized on the windows (box: A⁺ l +
A⁻ u; l_p ball: <A, x0> − ε ||A||_q, and the box bound when it has a domain,
as `backward.concretize_set`). At any other equation the windows become
dense coefficients and the generic backward pass goes on from there.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from cure_jax.bounds import conv_transpose, linear_rules, relaxations
from cure_jax.bounds.forward import Env, as_interval, is_bounded, read
from cure_jax.bounds.graph import Const, Eqn, evaluate_concrete
from cure_jax.bounds.interval import Interval
from cure_jax.bounds.sets import Box, lp_norm

# flax.linen.Conv's layout: (batch, spatial..., feature) for inputs and
# outputs, (spatial..., in, out) for kernels.
_NHWC = (0, 3, 1, 2)
_HWIO = (3, 2, 0, 1)
_ELEMENTWISE = frozenset(
  {"add", "sub", "mul", "div", "neg", "convert_element_type"}
)


class Consecutive(NamedTuple):
  """Rows that are every channel of ``count`` consecutive positions from
  ``first``, the + rows then the − rows: row (s, p, c) at position
  first + p. What a row reads from its position (or neuron) is then a slice
  of the per-position array, broadcast over the channels and signs, not a
  gather (the rows of a `layer_bounds.RowPlan` in order)."""

  first: jax.Array
  count: int
  channels: int

  def _mine(self, per_position: jax.Array) -> jax.Array:
    """[count, ...] from [P, ...] (zeros past the last position)."""
    padded = jnp.pad(
      per_position, ((0, self.count),) + ((0, 0),) * (per_position.ndim - 1)
    )
    return jax.lax.dynamic_slice_in_dim(
      padded, self.first, self.count, allow_negative_indices=False
    )

  def _rows(self, array: jax.Array) -> jax.Array:
    """[2, count, channels, ...] (size-1 axes broadcast) -> [2R, ...]."""
    tail = array.shape[3:]
    full = (2, self.count, self.channels) + tail
    return jnp.broadcast_to(array, full).reshape((-1,) + tail)

  def take(self, per_position: jax.Array) -> jax.Array:
    """[2R, ...] from [P, ...]: each row's position's entry."""
    return self._rows(self._mine(per_position)[None, :, None])

  def per_channel(self, per_channel: jax.Array) -> jax.Array:
    """[2R, ...] from [channels, ...]: each row's channel's entry."""
    return self._rows(per_channel[None, None])

  def signed(self, per_neuron: jax.Array) -> jax.Array:
    """[2R, ...] from [P, channels, ...]: +entry on the + rows, −entry on
    the − rows."""
    mine = self._mine(per_neuron)
    sign = jnp.array([1, -1], mine.dtype).reshape((2,) + (1,) * mine.ndim)
    return self._rows(sign * mine[None])


class Window(NamedTuple):
  """Coefficients of 2R rows on a [B, H, W, C] value, one window per row.

  Attributes:
    values: [2R, B, h, w, C] coefficients (zero outside the image).
    position: each row's neuron position (index into origins): [2R] int32,
      or `Consecutive`.
    origins: [P, 2] int32 top-left (row, column) of the windows of each of
      the P positions of the bounded layer.
  """

  values: jax.Array
  position: Any
  origins: jax.Array

  def per_row(self, per_position: jax.Array) -> jax.Array:
    """[2R, ...] from [P, ...]: each row's position's entry."""
    if isinstance(self.position, Consecutive):
      return self.position.take(per_position)
    return per_position[self.position]

  @property
  def size(self) -> tuple[int, int]:
    return self.values.shape[2:4]


def _spatial_pad(array: jax.Array, size) -> jax.Array:
  """[B, H, W, C] zero-padded by the window size on each spatial side."""
  h, w = size
  return jnp.pad(array, ((0, 0), (h, h), (w, w), (0, 0)))


def gather(full: jax.Array, origin: jax.Array, size) -> jax.Array:
  """Windows of a [B, H, W, C] array at ``origin`` [P, 2] (zeros outside the
  image): [P, B, h, w, C]."""
  h, w = size
  padded = _spatial_pad(full, size)
  take = lambda o: jax.lax.dynamic_slice(
    padded, (0, o[0] + h, o[1] + w, 0), (full.shape[0], h, w, full.shape[3])
  )
  return jax.vmap(take)(origin)


def in_image(origin: jax.Array, size, spatial, dtype) -> jax.Array:
  """[P, 1, h, w, 1]: 1 on window entries inside the H × W image."""
  ones = jnp.ones((1,) + tuple(spatial) + (1,), dtype)
  return gather(ones, origin, size)


def to_dense(window: Window, shape) -> jax.Array:
  """The rows' dense coefficients [2R, *shape] (shape = [B, H, W, C])."""
  _, _, h, w, _ = window.values.shape
  batch, height, width, channels = shape
  canvas = jnp.zeros((batch, height + 2 * h, width + 2 * w, channels))
  canvas = canvas.astype(window.values.dtype)

  def place(values, o):
    full = jax.lax.dynamic_update_slice(
      canvas, values, (0, o[0] + h, o[1] + w, 0)
    )
    return full[:, h : h + height, w : w + width]

  return jax.vmap(place)(window.values, window.per_row(window.origins))


def conv_geometry(eqn: Eqn, x_shape, kernel_shape) -> dict | None:
  """Strides, low padding, dilation and groups of a convolution the windows
  can go through (see the module docstring), else None.

  Padding must be narrower than the (dilated) kernel on every side: then
  every window overlaps the image, so it lies within the margin `gather`
  pads by (wider padding only adds outputs that see zeros alone).
  """
  if eqn.name != "conv_general_dilated" or len(x_shape) != 4:
    return None
  p = eqn.params
  numbers = p["dimension_numbers"]
  if (
    tuple(numbers.lhs_spec) != _NHWC
    or tuple(numbers.rhs_spec) != _HWIO
    or tuple(numbers.out_spec) != _NHWC
    or any(d != 1 for d in p["lhs_dilation"])
    or p["batch_group_count"] != 1
  ):
    return None
  for (lo, hi), k, d in zip(p["padding"], kernel_shape[:2], p["rhs_dilation"]):
    if not (0 <= lo < (k - 1) * d + 1 and 0 <= hi < (k - 1) * d + 1):
      return None
  return dict(
    strides=tuple(p["window_strides"]),
    pad_lo=tuple(lo for lo, _ in p["padding"]),
    dilation=tuple(p["rhs_dilation"]),
    groups=p["feature_group_count"],
  )


def windows_below(geometry: dict, kernel_shape, origins, size):
  """Origins [P, 2] and size of the windows on a convolution's input below
  windows of ``size`` at ``origins`` on its output:
  h_in = (h − 1)·s + (K − 1)·d + 1, origin_in = s·origin − pad_lo."""
  (s_h, s_w), (d_h, d_w) = geometry["strides"], geometry["dilation"]
  h, w = size
  size = (
    (h - 1) * s_h + (kernel_shape[0] - 1) * d_h + 1,
    (w - 1) * s_w + (kernel_shape[1] - 1) * d_w + 1,
  )
  strides = jnp.asarray(geometry["strides"], jnp.int32)
  return origins * strides - jnp.asarray(geometry["pad_lo"], jnp.int32), size


# A window's transposed convolution is a matrix product when its matrix
# has at most this many entries (4 MB in float32): XLA:CPU multiplies
# matrices several times faster than it convolves thousands of small
# windows (3.3× for the small MNIST CNN's 4×4×16 → 10×10 windows, though
# the product does 6× the multiplications), also in α-CROWN's gradient.
MATRIX_ENTRIES = 1 << 20


def through_conv(
  window: Window, eqn: Eqn, kernel: jax.Array, geometry: dict, x_shape
) -> Window:
  """Aᵀ through y = conv(x, kernel) on windows: the VALID convolution's VJP
  (as a matrix product for small windows: `MATRIX_ENTRIES`)."""
  values = window.values
  rows, batch, h, w, channels_out = values.shape
  origins, size = windows_below(geometry, kernel.shape, window.origins, (h, w))
  params = dict(eqn.params, padding=((0, 0), (0, 0)))
  below = size + (x_shape[3],)
  pull = conv_transpose.pullback(
    eqn.primitive, params, kernel, (1,) + below, values.dtype
  )
  flat = values.reshape((rows * batch, h, w, channels_out))
  n_out, n_in = h * w * channels_out, math.prod(below)
  if n_out * n_in <= MATRIX_ENTRIES:
    # Lᵀ of one window as a matrix [n_out, n_in], from its rows' images.
    basis = jnp.eye(n_out, dtype=values.dtype).reshape((n_out, h, w, -1))
    matrix = pull(basis).reshape((n_out, n_in))
    pulled = flat.reshape((rows * batch, n_out)) @ matrix
  else:
    pulled = pull(flat)
  pulled = pulled.reshape((rows, batch) + below)
  mask = window.per_row(in_image(origins, size, x_shape[1:3], values.dtype))
  return Window(pulled * mask, window.position, origins)


def _elementwise_line(eqn: Eqn, args, position: int, shape, dtype):
  """(scale, offset) of y = a·x + b, an elementwise affine equation in its
  bounded operand x, as [B, H, W, C] arrays (exact: a JVP at x = 0)."""

  def at(x):
    values = list(args)
    values[position] = x
    return jnp.broadcast_to(evaluate_concrete(eqn, values)[0], shape)

  zeros, ones = jnp.zeros(shape, dtype), jnp.ones(shape, dtype)
  offset, scale = jax.jvp(at, (zeros,), (ones,))
  return scale, offset


def _windows_of(window: Window, full: jax.Array) -> jax.Array:
  """Each row's window of a [B, H, W, C] array: [2R, B, h, w, C]."""
  return window.per_row(gather(full, window.origins, window.size))


def through_elementwise(window: Window, scale, offset) -> tuple[Window, Any]:
  """A ⊙ scale on the windows; bias <A, offset>: (window, [2R, B])."""
  values = window.values
  bias = linear_rules.inner_product(values, _windows_of(window, offset))
  scaled = values * _windows_of(window, scale)
  return window._replace(values=scaled), bias


def through_relu(
  window: Window, box: Interval, c, alpha: jax.Array | None
) -> tuple[Window, jax.Array]:
  """A through max(x, c) (CROWN's relaxation on the windows of x's bounds)."""
  size = window.size
  lower = gather(box.lower, window.origins, size) - c
  upper = gather(box.upper, window.origins, size) - c
  if alpha is None:  # one relaxation per position, read by its rows
    relax = relaxations.relu_relaxation(lower, upper)
    relax = jax.tree.map(window.per_row, relax)
  else:  # slopes per row, or shared
    alpha = _slope_windows(alpha, window)
    relax = relaxations.relu_relaxation(
      window.per_row(lower), window.per_row(upper), alpha
    )
  in_x = relaxations.LinearRelaxation(
    relax.lower_slope,
    c * (1 - relax.lower_slope) + relax.lower_offset,
    relax.upper_slope,
    c * (1 - relax.upper_slope) + relax.upper_offset,
  )
  values, bias = linear_rules._pull_through(  # noqa: SLF001
    in_x,
    window.values,
    zero_lower_offset=linear_rules._is_literal_zero(c),  # noqa: SLF001
  )
  return window._replace(values=values), bias


def _slope_windows(alpha: jax.Array, window: Window) -> jax.Array:
  """α-CROWN slopes on the windows: shared by the rows ([1, B, H, W, C]),
  cut into windows; per row, already windows ([2R, B, h, w, C])."""
  if alpha.shape[0] == 1:
    return _windows_of(window, alpha[0])
  if alpha.shape != window.values.shape:
    raise ValueError(
      f"per-row slopes of a windowed pass must be its windows "
      f"{window.values.shape} (initial_window_slopes), got {alpha.shape}."
    )
  return alpha


def concretize(leaf, window: Window) -> jax.Array:
  """min over the input set of <A, x> on the windows: [2R, B]."""
  values = window.values

  def box_bound(interval: Interval):
    lower = _windows_of(window, interval.lower)
    upper = _windows_of(window, interval.upper)
    return linear_rules.inner_product(
      jnp.maximum(values, 0), lower
    ) + linear_rules.inner_product(jnp.minimum(values, 0), upper)

  if isinstance(leaf, Box):
    return box_bound(Interval(leaf.lower, leaf.upper))
  if leaf.p == math.inf:
    return box_bound(leaf.bounding_box())
  flat = values.reshape(values.shape[:2] + (-1,))
  center = linear_rules.inner_product(values, _windows_of(window, leaf.center))
  ball = center - leaf.radius_per_example() * lp_norm(flat, leaf.dual, axis=-1)
  if leaf.domain is None:
    return ball
  return jnp.maximum(ball, box_bound(leaf.bounding_box()))


class Step(NamedTuple):
  """One equation of a windowed chain: ``kind`` in {"conv", "elementwise",
  "relu"}, the equation, and what its rule needs."""

  kind: str
  eqn: Eqn
  data: dict


def _one_bounded(eqn: Eqn, env: Env) -> int | None:
  if len(eqn.outputs) != 1:
    return None
  bounded = [
    i
    for i, a in enumerate(eqn.inputs)
    if not isinstance(a, Const) and a in env and is_bounded(env[a])
  ]
  return bounded[0] if len(bounded) == 1 else None


def _shape(env: Env, atom) -> tuple:
  return tuple(as_interval(env[atom]).shape)


def _step(eqn: Eqn, env: Env) -> Step | None:
  """The windowed rule for ``eqn``, or None where the windows stop."""
  i = _one_bounded(eqn, env)
  if i is None:
    return None
  x = eqn.inputs[i]
  x_shape, y_shape = _shape(env, x), _shape(env, eqn.outputs[0])
  if len(x_shape) != 4:
    return None
  if eqn.name == "conv_general_dilated" and i == 0:
    geometry = conv_geometry(eqn, x_shape, jnp.shape(read(env, eqn.inputs[1])))
    if geometry is None:
      return None
    return Step("conv", eqn, dict(x=x, geometry=geometry))
  if eqn.name == "max":
    c = read(env, eqn.inputs[1 - i])
    if jnp.ndim(c) != 0 or eqn.inputs[1 - i] == x:
      return None
    return Step("relu", eqn, dict(x=x, c=c))
  if eqn.name in _ELEMENTWISE and x_shape == y_shape:
    if eqn.name == "div" and i != 0:
      return None
    return Step("elementwise", eqn, dict(x=x, position=i))
  return None


def chain_below(producers, env: Env, sets, value) -> tuple[list[Step], Any]:
  """The windowed steps from ``value`` down, and where they end: the input
  set leaf's id when they reach one, else the value to hand over densely."""
  steps = []
  while value not in sets:
    eqn = producers.get(value)
    step = None if eqn is None else _step(eqn, env)
    if step is None:
      return steps, value
    steps.append(step)
    value = step.data["x"]
  return steps, value


class Chain(NamedTuple):
  """A windowable pass from ``atom = g(conv(y))``.

  Attributes:
    top: g's elementwise steps (from atom down).
    conv: the convolution's step.
    below: the windowed steps from y down.
    end: the input set's id where the windows end there, else the value
      they hand over (densely) to the generic pass.
  """

  top: list
  conv: Step
  below: list
  end: Any


def find_chain(producers, env: Env, sets, atom) -> Chain | None:
  """``atom``'s windowable chain (g elementwise affine with constants, and
  at least one windowed step below the convolution, or the input set right
  below it), else None."""
  top, value = [], atom
  while True:  # g's elementwise equations, then the convolution
    eqn = producers.get(value)
    step = None if eqn is None else _step(eqn, env)
    if step is None or step.kind == "relu":
      return None
    value = step.data["x"]
    if step.kind == "conv":
      break
    top.append(step)
  below, end = chain_below(producers, env, sets, value)
  if not below and end not in sets:
    return None  # a convolution of a dense value: no window to gain
  return Chain(top, step, below, end)


def windowed_pass(
  producers, env: Env, sets, atom
) -> Callable[..., tuple[jax.Array, Any]] | None:
  """A windowed pass from ``atom`` along `find_chain`'s chain, else None
  (the dense pass).

  Returns:
    ``run(index [R], slopes, in_order=False) -> (lower [2R, B], handoff)``
    (``in_order``: index is consecutive neurons from a multiple of the
    channels, as `layer_bounds.RowPlan.in_order` chunks): the lower bounds
    of the rows +e_index (first R) and -e_index (last R) of ``atom`` so far,
    and None when the windows reached an input set, or ``(value id, dense
    coefficients [2R, *value.shape])`` for the generic pass to finish.
    ``slopes`` maps the output id of a ReLU to α-CROWN's lower slopes:
    windows per row ([2R, B, h, w, C], `initial_window_slopes`'s layout) for
    the ReLUs the windows go through, or shared by the rows ([1, B, H, W,
    C]); full per-row arrays for the ReLUs after the hand-over.
  """
  chain = find_chain(producers, env, sets, atom)
  if chain is None:
    return None
  conv, end = chain.conv, chain.end
  z, y = conv.eqn.outputs[0], conv.data["x"]
  z_shape, y_shape = _shape(env, z), _shape(env, y)
  dtype = as_interval(env[atom]).lower.dtype
  scale, offset = _chain_line(chain.top, env, z, atom, z_shape, dtype)
  kernel = read(env, conv.eqn.inputs[1])

  def run(
    index: jax.Array, slopes: dict, in_order: bool = False
  ) -> tuple[jax.Array, Any]:
    window, row_offset = _start(
      index,
      kernel,
      conv.data["geometry"],
      scale,
      offset,
      z_shape,
      y_shape,
      in_order,
    )
    bias = row_offset
    for step in chain.below:
      window, term = _apply(step, window, env, slopes)
      bias = bias + term
    if end in sets:
      return bias + concretize(sets[end], window), None
    return bias, (end, to_dense(window, _shape(env, end)))

  return run


def relu_windows(producers, env: Env, sets, atom, index) -> dict:
  """{ReLU output id: (origin of each row's window [2R, 2], size)} for the
  ReLUs the windowed pass from ``atom`` goes through (rows ±e_index)."""
  chain = find_chain(producers, env, sets, atom)
  if chain is None:
    return {}
  conv = chain.conv
  z_shape = _shape(env, conv.eqn.outputs[0])
  kernel = read(env, conv.eqn.inputs[1])
  geometry = conv.data["geometry"]
  d_h, d_w = geometry["dilation"]
  size = ((kernel.shape[0] - 1) * d_h + 1, (kernel.shape[1] - 1) * d_w + 1)
  origins = _grid_origins(z_shape, geometry)
  position = jnp.tile(_positions(index, z_shape[3]), 2)
  found = {}
  for step in chain.below:
    if step.kind == "conv":
      kernel_shape = jnp.shape(read(env, step.eqn.inputs[1]))
      origins, size = windows_below(
        step.data["geometry"], kernel_shape, origins, size
      )
    elif step.kind == "relu":
      found[step.eqn.outputs[0]] = (origins[position], size)
  return found


def _grid_origins(z_shape, geometry: dict) -> jax.Array:
  """[P, 2] origins of the windows of the P positions of a conv's output."""
  grid = jnp.stack(
    jnp.meshgrid(jnp.arange(z_shape[1]), jnp.arange(z_shape[2]), indexing="ij"),
    axis=-1,
  ).reshape(-1, 2)
  strides = jnp.asarray(geometry["strides"], jnp.int32)
  return grid.astype(jnp.int32) * strides - jnp.asarray(
    geometry["pad_lo"], jnp.int32
  )


def _positions(index, channels: int) -> jax.Array:
  """Each neuron's spatial position (i·W + j) from its flat index."""
  return (index // channels).astype(jnp.int32)


def initial_window_slopes(
  producers, env: Env, sets, atom, index
) -> dict[int, jax.Array]:
  """CROWN's lower slopes on each row's windows, per ReLU the windowed pass
  from ``atom`` goes through: {ReLU output id: [2R, B, h, w, C]}."""
  slopes = {}
  for unit, (row_origins, size) in relu_windows(
    producers, env, sets, atom, index
  ).items():
    eqn = producers[unit]
    i = _one_bounded(eqn, env)
    box = as_interval(env[eqn.inputs[i]])
    c = read(env, eqn.inputs[1 - i])
    full = relaxations.crown_lower_slope(box.lower - c, box.upper - c)
    take = lambda o: gather(full, o[None], size)[0]  # noqa: B023
    slopes[unit] = jax.vmap(take)(row_origins)
  return slopes


def _chain_line(top: list[Step], env: Env, z, atom, z_shape, dtype):
  """(scale, offset) [B, H, W, C] of atom = g(z), g the elementwise ``top``
  equations (a JVP at z = 0: the chain's exact diagonal and offset)."""

  def chain(value):
    values = {z: value}
    for step in reversed(top):
      eqn = step.eqn
      args = [
        values[a] if not isinstance(a, Const) and a in values else read(env, a)
        for a in eqn.inputs
      ]
      values[eqn.outputs[0]] = evaluate_concrete(eqn, args)[0]
    return jnp.broadcast_to(values[atom], z_shape)

  zeros, ones = jnp.zeros(z_shape, dtype), jnp.ones(z_shape, dtype)
  offset, scale = jax.jvp(chain, (zeros,), (ones,))
  return scale, offset


def _to_all_channels(taps, c, groups: int, channels_out: int, y_shape):
  """A grouped kernel's taps [R, K_h, K_w, C_in / G] placed at the input
  channels of each output channel's group: [R, K_h, K_w, C_in]."""
  if groups == 1:
    return taps
  per_group = y_shape[3] // groups
  group = c // (channels_out // groups)
  full = jnp.zeros(taps.shape[:3] + (y_shape[3],), taps.dtype)
  place = lambda f, t, g: jax.lax.dynamic_update_slice(
    f, t, (0, 0, g * per_group)
  )
  return jax.vmap(place)(full, taps, group)


def _taps(kernel, c, geometry: dict, y_shape) -> jax.Array:
  """[R, K_h', K_w', C_in]: the (dilated) kernel of output channel c[r]."""
  d_h, d_w = geometry["dilation"]
  taps = jnp.moveaxis(kernel[..., c], -1, 0)  # [R, K_h, K_w, C_in / G]
  taps = _to_all_channels(taps, c, geometry["groups"], kernel.shape[3], y_shape)
  return jax.lax.pad(
    taps,
    jnp.zeros((), taps.dtype),
    ((0, 0, 0), (0, 0, d_h - 1), (0, 0, d_w - 1), (0, 0, 0)),
  )


def _start(
  index,
  kernel,
  geometry: dict,
  scale,
  offset,
  z_shape,
  y_shape,
  in_order: bool = False,
):
  """The rows ±e_index of atom = scale ⊙ conv(y) + offset as windows on y:
  ±scale_i times the kernel of neuron i's channel at its receptive field
  (``in_order``: index runs over every channel of consecutive positions;
  the windows are then broadcasts of per-channel and per-position arrays,
  which XLA fuses into the rules that read them).

  Returns:
    (window [2R, B, h, w, C_in], the rows' constant terms [2R, B]).
  """
  batch, _, _, channels = z_shape
  rows = index.shape[0]
  origins = _grid_origins(z_shape, geometry)
  if in_order and rows % channels == 0:
    at = Consecutive(
      jax.lax.div(index[0], jnp.int32(channels)), rows // channels, channels
    )
    taps = _taps(kernel, jnp.arange(channels), geometry, y_shape)
    per_neuron = lambda a: a.reshape(batch, -1, channels).transpose(1, 2, 0)
    mask = in_image(origins, taps.shape[1:3], y_shape[1:3], taps.dtype)
    row_scale = at.signed(per_neuron(scale))  # [2R, B]
    values = (
      row_scale[:, :, None, None, None]
      * at.per_channel(taps)[:, None]
      * at.take(mask)
    )
    return Window(values, at, origins), at.signed(per_neuron(offset))
  c = index % channels
  taps = _taps(kernel, c, geometry, y_shape)
  flat = lambda a: a.reshape(a.shape[0], -1)[:, index].T  # [R, B]
  values = flat(scale)[:, :, None, None, None] * taps[:, None]
  position = _positions(index, channels)
  window = Window(
    jnp.concatenate([values, -values]),
    jnp.concatenate([position, position]),
    origins,
  )
  mask = in_image(origins, taps.shape[1:3], y_shape[1:3], values.dtype)
  window = window._replace(values=window.values * window.per_row(mask))
  row_offset = flat(offset)
  return window, jnp.concatenate([row_offset, -row_offset])


def _apply(step: Step, window: Window, env: Env, slopes: dict):
  eqn, data = step.eqn, step.data
  x_shape = _shape(env, data["x"])
  zero = jnp.zeros(window.values.shape[:2], window.values.dtype)
  if step.kind == "conv":
    kernel = read(env, eqn.inputs[1])
    return through_conv(window, eqn, kernel, data["geometry"], x_shape), zero
  if step.kind == "relu":
    alpha = slopes.get(eqn.outputs[0])
    return through_relu(window, as_interval(env[data["x"]]), data["c"], alpha)
  args = [
    None if k == data["position"] else read(env, a)
    for k, a in enumerate(eqn.inputs)
  ]
  scale, offset = _elementwise_line(
    eqn, args, data["position"], x_shape, window.values.dtype
  )
  return through_elementwise(window, scale, offset)
