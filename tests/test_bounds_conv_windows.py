"""CROWN passes through convolution chains on windows (`conv_windows`).

Windows are an exact re-arrangement of the dense backward pass: on networks
with every kind of step the windows handle (padding, strides, dilation,
feature groups, BatchNorm, input normalization, ReLU thresholds, three
convolutions deep) and with steps where they hand over to the dense pass
(pooling, leaky ReLU), over every kind of input set, the intermediate
bounds, CROWN's margins and α-CROWN's margins equal those of the dense
pass; the windows are really used where they apply.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cure_jax.bounds import (
  Box,
  L1Ball,
  L2Ball,
  LinfBall,
  alpha_crown,
  conv_windows,
  crown,
  margin_spec,
)
from cure_jax.bounds import intermediate as intermediate_bounds
from cure_jax.bounds.transforms import _sets_by_id, _trace_checked

NUM_CLASSES = 5


class ConvChain(nn.Module):
  """Normalization, then three convolutions (BatchNorm after the first)."""

  padding: object = "SAME"
  strides: int = 2
  dilation: int = 1
  groups: int = 1
  threshold: float = 0.0

  @nn.compact
  def __call__(self, x):
    x = (x - 0.4) / 0.3
    x = nn.Conv(4, (3, 3), strides=self.strides, padding=self.padding)(x)
    x = nn.BatchNorm(use_running_average=True)(x)
    x = jnp.maximum(x, self.threshold)
    x = nn.Conv(
      4,
      (3, 3),
      padding=self.padding,
      kernel_dilation=self.dilation,
      feature_group_count=self.groups,
    )(x)
    x = nn.relu(x)
    x = nn.relu(nn.Conv(6, (3, 2), strides=1, padding=self.padding)(x))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


class HandOver(nn.Module):
  """A convolution after max pooling, one after a leaky ReLU: the windows
  stop there and the dense pass finishes."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.leaky_relu(nn.Conv(4, (3, 3), padding="SAME")(x), 0.1)
    x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
    x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


NETWORKS = {
  "same_stride_2": ConvChain(),
  "valid_stride_1": ConvChain(padding="VALID", strides=1),
  "explicit_padding": ConvChain(padding=((2, 0), (0, 1)), strides=3),
  "dilated_grouped": ConvChain(dilation=2, groups=2),
  "threshold": ConvChain(threshold=0.1),
  "hand_over": HandOver(),
}
SETS = {
  "linf_clipped": lambda x: LinfBall(x, 0.03, domain=(0.0, 1.0)),
  "l2_clipped": lambda x: L2Ball(x, 0.3, domain=(0.0, 1.0)),
  "l1": lambda x: L1Ball(x, 0.6),
  "box": lambda x: Box(x - 0.02, x + 0.03),
}


@functools.cache
def _problem(net_name):
  module = NETWORKS[net_name]
  k_x, k_init, k_stats, k_labels = jax.random.split(jax.random.key(7), 4)
  x = jax.random.uniform(k_x, (3, 11, 10, 2))
  variables = module.init(k_init, x)
  if "batch_stats" in variables:
    stats = variables["batch_stats"]
    keys = jax.random.split(k_stats, 2)
    stats = jax.tree.map(
      lambda v: v + 0.3 * jax.random.uniform(keys[0], v.shape), stats
    )
    variables = dict(variables, batch_stats=stats)
  labels = jax.random.randint(k_labels, (3,), 0, NUM_CLASSES)
  return module, variables, x, labels


def _refined(net_name, set_name, windows, pass_bytes=None, jit=True):
  """Every refined interval; jitted, every neuron is a row (in order),
  eagerly only the unstable ones."""
  module, variables, x, _ = _problem(net_name)
  budget = {} if pass_bytes is None else {"pass_bytes": pass_bytes}

  def bounds(variables, x):
    graph, leaves = _trace_checked(
      module.apply, (variables, SETS[set_name](x)), {}
    )
    sets = _sets_by_id(graph, leaves)
    _, refinement = intermediate_bounds.refined_environment(
      graph, leaves, sets, windows=windows, **budget
    )
    return refinement.bounds

  return (jax.jit(bounds) if jit else bounds)(variables, x)


def _windowed_values(net_name, set_name):
  """Ids of the values whose passes go through windows (found by tracing)."""
  module, variables, x, _ = _problem(net_name)
  found = []

  def trace(variables, x):
    graph, leaves = _trace_checked(
      module.apply, (variables, SETS[set_name](x)), {}
    )
    sets = _sets_by_id(graph, leaves)
    env, refinement = intermediate_bounds.refined_environment(
      graph, leaves, sets
    )
    producers = graph.producers()
    found.extend(
      atom
      for atom in refinement.bounds
      if conv_windows.windowed_pass(producers, env, sets, atom) is not None
    )
    return refinement.bounds

  jax.eval_shape(trace, variables, x)
  return found


@pytest.mark.parametrize(
  "net_name,set_name",
  [
    ("same_stride_2", "linf_clipped"),
    ("valid_stride_1", "l2_clipped"),
    ("explicit_padding", "l1"),
    ("dilated_grouped", "box"),
    ("threshold", "l2_clipped"),
    ("hand_over", "linf_clipped"),
  ],
)
def test_windowed_intermediate_bounds_equal_the_dense_pass(net_name, set_name):
  _assert_same_bounds(
    _refined(net_name, set_name, windows=True),
    _refined(net_name, set_name, windows=False),
    f"{net_name} {set_name}",
  )


@pytest.mark.parametrize(
  "net_name,set_name",
  [("same_stride_2", "l2_clipped"), ("dilated_grouped", "box")],
)
def test_windows_through_convolutions_not_matrices_equal_the_dense_pass(
  net_name, set_name, monkeypatch
):
  # The test networks' windows are small enough for matrix products; with
  # no matrix allowed, every window goes through the transposed convolution.
  monkeypatch.setattr(conv_windows, "MATRIX_ENTRIES", 0)
  _assert_same_bounds(
    _refined(net_name, set_name, windows=True),
    _refined(net_name, set_name, windows=False),
    f"{net_name} {set_name}",
  )


def _assert_same_bounds(windowed: dict, dense: dict, what: str):
  assert windowed.keys() == dense.keys()
  for atom in dense:
    for side in ("lower", "upper"):
      np.testing.assert_allclose(
        getattr(windowed[atom], side),
        getattr(dense[atom], side),
        rtol=1e-5,
        atol=1e-5,
        err_msg=f"{what} value {atom} {side}",
      )


# Bytes per row of a pass on `same_stride_2` (3 examples × its largest
# value, the 220 inputs, × 4 bytes × the 4 live copies
# `layer_bounds.rows_per_chunk` allows for); a chunk holds both signs.
_ROW_BYTES = 3 * 220 * 4 * 4


@pytest.mark.parametrize(
  "rows_per_chunk,jit",
  [
    # 45: chunks of whole positions (40 rows of the 4-channel layer, 48 of
    # the 6-channel one, its last chunk past the last position), read
    # without gathers.
    (45, True),
    # 3: fewer rows than channels, so each row gathers its position's data
    # (as do the unstable rows of an eager call, not in order).
    (3, True),
  ],
)
def test_chunked_passes_equal_the_dense_pass(rows_per_chunk, jit):
  dense = _refined("same_stride_2", "linf_clipped", windows=False, jit=jit)
  chunked = _refined(
    "same_stride_2",
    "linf_clipped",
    windows=True,
    pass_bytes=2 * rows_per_chunk * _ROW_BYTES,
    jit=jit,
  )
  _assert_same_bounds(chunked, dense, f"{rows_per_chunk} rows, jit={jit}")


@pytest.mark.parametrize(
  "net_name,expected",
  [("same_stride_2", 2), ("dilated_grouped", 2), ("hand_over", 1)],
)
def test_windows_are_used_where_a_convolution_of_a_windowable_value_is_bounded(
  net_name, expected
):
  # ConvChain: the second and third convolutions' outputs (the first is the
  # input's affine image). HandOver: only the last convolution's, whose
  # windows go through a ReLU and a convolution and hand over at the leaky
  # ReLU; the two before it convolve a value the windows cannot reach (the
  # pooling's and the leaky ReLU's outputs).
  assert len(_windowed_values(net_name, "linf_clipped")) == expected


def _no_windows(monkeypatch) -> list:
  """Turns the windows off (passes and α-CROWN's window slopes); returns the
  list of calls that found them off, so a test can see a fresh trace ran."""
  calls = []

  def no_pass(*args):
    calls.append(args)

  monkeypatch.setattr(conv_windows, "windowed_pass", no_pass)
  monkeypatch.setattr(conv_windows, "initial_window_slopes", lambda *a: {})
  return calls


def test_crown_and_alpha_crown_margins_equal_the_dense_pass(monkeypatch):
  module, variables, x, labels = _problem("hand_over")
  spec = margin_spec(labels, NUM_CLASSES)
  ball = SETS["l2_clipped"](x)
  methods = {
    "crown": crown(module.apply, bound="lower"),
    # At most 35 neurons' rows per chunk: the windowed layer's 36 neurons
    # (4 channels) in two chunks of 5 positions, the second past the last
    # position, each with its windows' slopes (fewer chunks elsewhere than
    # a smaller budget gives, so fewer passes to compile).
    # Plain gradient steps: Adam's first steps are ±lr for every slope
    # whatever its gradient's size, so the summation order of a gradient
    # that is zero up to round-off would decide them.
    "alpha_crown": alpha_crown(
      module.apply,
      steps=3,
      optimizer=optax.sgd(0.5),
      early_stop=False,
      bound="lower",
      # 70 rows × 3 examples × 440 values (the largest) × 4 bytes × the 4
      # live copies `layer_bounds.rows_per_chunk` allows for.
      pass_bytes=70 * 3 * 440 * 4 * 4,
    ),
  }

  # A fresh function per call: jit must trace again once windows are off.
  # Both methods in one compilation (XLA shares CROWN's passes).
  def margins(calls=()):
    """({method: margins}, {method: whether a pass found windows off})."""
    dense_pass = {}

    def every_method(v, b, s):
      out = {}
      for name, method in methods.items():
        before = len(calls)
        out[name] = method(v, b, spec=s).lower
        dense_pass[name] = len(calls) > before
      return out

    return jax.jit(every_method)(variables, ball, spec), dense_pass

  windowed, _ = margins()
  dense, dense_pass = margins(_no_windows(monkeypatch))
  for name in methods:
    assert dense_pass[name], f"{name}: the dense pass was not traced"
    np.testing.assert_allclose(
      windowed[name], dense[name], rtol=1e-4, atol=1e-4, err_msg=name
    )


def test_gather_and_to_dense_are_inverse_on_the_image():
  full = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
  origin = jnp.array([[-1, -2], [3, 4], [0, 0]], jnp.int32)
  windows = conv_windows.gather(full, origin, (3, 4))
  # Entries outside the image are zeros; inside they are full's.
  np.testing.assert_array_equal(windows[0, :, 0], 0.0)
  np.testing.assert_array_equal(windows[0, :, 1:, 2:], full[:, :2, :2])
  np.testing.assert_array_equal(windows[1, :, :2, :2], full[:, 3:, 4:])
  # Rows 0 and 1 at position 2 (origin (0, 0)), row 2 at position 1.
  rows = windows[jnp.array([2, 2, 1])]
  window = conv_windows.Window(rows, jnp.array([2, 2, 1]), origin)
  dense = conv_windows.to_dense(window, full.shape)
  np.testing.assert_array_equal(dense[0], dense[1])
  np.testing.assert_array_equal(dense[0, :, :3, :4], full[:, :3, :4])
  np.testing.assert_array_equal(dense[0, :, 3:], 0.0)
  np.testing.assert_array_equal(dense[2, :, 3:, 4:], full[:, 3:, 4:])
  np.testing.assert_array_equal(dense[2, :, :3], 0.0)


@pytest.mark.parametrize(
  "padding,windowable",
  [
    (((1, 1), (1, 1)), True),
    (((2, 2), (0, 0)), True),
    (((3, 0), (0, 0)), False),
  ],
)
def test_padding_as_wide_as_the_kernel_keeps_the_dense_pass(
  padding, windowable
):
  kernel = jnp.ones((3, 3, 1, 2))

  def conv(x):
    return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  x = jnp.zeros((1, 5, 5, 1))
  graph, _ = _trace_checked(conv, (Box(x, x + 1),), {})
  (eqn,) = [e for e in graph.eqns if e.name == "conv_general_dilated"]
  geometry = conv_windows.conv_geometry(eqn, x.shape, kernel.shape)
  assert (geometry is not None) == windowable
