"""Linear bounds of a ReLU chain under neuron split constraints (β-CROWN).

A *ReLU chain* is a function f = g_{m+1} ∘ relu ∘ g_m ∘ … ∘ relu ∘ g_1 whose
g_k are affine (dense, convolution, BatchNorm in eval mode, normalization,
reshapes). `relu_chain` extracts one from any JAX function by tracing it
(`graph.trace`): the ReLUs are its ``max(z, 0)`` equations, the segments
between them are replayed primitive by primitive; anything else on the path
from the input (a max-pool, a residual connection, a product of two inputs)
raises `UnsupportedPrimitiveError` naming the primitive and its source line.

A *domain* fixes the sign of some pre-activations z_k,i: split s = +1 means
z ≥ 0 (the ReLU is the identity there), s = −1 means z ≤ 0 (it is 0),
s = 0 leaves the neuron to its bounds [l, u]. β-CROWN (Wang et al., NeurIPS
2021) bounds min c·f(x) over x ∈ X with the splits by the Lagrangian

  min_x c·f(x) − Σ_{k,i} β_k,i s_k,i z_k,i(x),   β ≥ 0,

which is below c·f(x) wherever the splits hold (each s z ≥ 0), so any β ≥ 0
gives a sound bound; in the backward (CROWN) pass the multiplier enters as
−β s on the coefficients of z_k. Unstable, unsplit ReLUs take the triangle
relaxation with lower slope α ∈ [0, 1] (α-CROWN); α and β are optimized.

Every function here handles one input point and one domain, with S
specification rows c; batch with `jax.vmap`.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.bounds.graph import Const, UnsupportedPrimitiveError, trace

# Primitives affine in their one input-dependent operand (or in all of them:
# sums), and primitives that move elements only.
_STRUCTURAL = frozenset(
  {
    "reshape",
    "broadcast_in_dim",
    "transpose",
    "squeeze",
    "expand_dims",
    "convert_element_type",
    "neg",
    "reduce_sum",
    "slice",
    "pad",
    "copy",
    "copy_p",
    "rev",
    "concatenate",
    "reduce_precision",
  }
)
_SUMS = frozenset({"add", "sub", "add_any"})
# Affine when exactly one operand depends on the input, at these positions.
_PRODUCTS = {
  "mul": (0, 1),
  "dot_general": (0, 1),
  "conv_general_dilated": (0,),
  "div": (0,),
}


class ReluChain(NamedTuple):
  """A ReLU network as flat single-example maps.

  Attributes:
    segments: the affine maps g_1, …, g_{m+1}, flat vector -> flat vector
      (g_k: R^{n_{k-1}} -> R^{n_k}).
    widths: (n_0, n_1, …, n_{m+1}): input size, ReLU widths, logits.
    input_shape: the per-example input shape (without batch).
  """

  segments: tuple[Callable[[jax.Array], jax.Array], ...]
  widths: tuple[int, ...]
  input_shape: tuple[int, ...]

  @property
  def num_relu_layers(self) -> int:
    return len(self.segments) - 1


def _is_zero(value) -> bool:
  return bool(np.all(np.asarray(value) == 0))


def _not_a_chain(eqn, why: str) -> UnsupportedPrimitiveError:
  return UnsupportedPrimitiveError(
    f"branch and bound needs a chain of affine operations and ReLUs; "
    f"primitive '{eqn.name}' at {eqn.source} {why}. Supported: dense, "
    f"convolution, BatchNorm in eval mode, normalization, reshapes and "
    f"ReLU (max(z, 0))."
  )


def _check_affine(eqn, dependent: Sequence[int]) -> None:
  """Raises unless ``eqn`` is affine in its input-dependent operands."""
  name = eqn.name
  if name in _STRUCTURAL or name in _SUMS:
    return
  if name in _PRODUCTS:
    if len(dependent) == 1 and dependent[0] in _PRODUCTS[name]:
      return
    raise _not_a_chain(
      eqn, "multiplies two input-dependent values or divides by one"
    )
  raise _not_a_chain(eqn, "is neither affine nor a ReLU")


def _relu_input(eqn, read, dependent: Sequence[int]) -> int | None:
  """The position of z if ``eqn`` is max(z, 0) (either order), else None."""
  if eqn.name != "max" or len(dependent) != 1:
    return None
  other = read(eqn.inputs[1 - dependent[0]])
  return dependent[0] if _is_zero(other) else None


def _replay(eqns, in_id, out_id, consts: dict, value: jax.Array) -> jax.Array:
  """Evaluates a segment's equations from ``value`` at ``in_id``."""
  env = {in_id: value}

  def read(atom):
    if isinstance(atom, Const):
      return atom.value
    return env[atom] if atom in env else consts[atom]

  for eqn in eqns:
    outs = eqn.primitive.bind(*[read(a) for a in eqn.inputs], **eqn.params)
    outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outputs, outs))
  return env[out_id]


def _flat_segment(eqns, in_id, out_id, consts, in_shape):
  def segment(flat: jax.Array) -> jax.Array:
    value = flat.reshape((1,) + tuple(in_shape))
    return _replay(eqns, in_id, out_id, consts, value).reshape(-1)

  return segment


def relu_chain(
  fn: Callable[[jax.Array], jax.Array], example: jax.Array
) -> ReluChain:
  """Extracts the ReLU chain of ``fn`` (batched: [1, ...] -> [1, K]).

  Args:
    fn: the network on a batch, e.g. ``lambda x: model.apply(v, x,
      train=False)``; only its input and output batch of 1 are used.
    example: one input, shape [1, ...] (its values are not used).

  Returns:
    The `ReluChain`.

  Raises:
    UnsupportedPrimitiveError: for a nonlinear or non-chain step.
    ValueError: if the output is not [1, K] or does not depend on the input.
  """
  graph, leaves = trace(fn, (example,), {})
  (x_id,) = graph.inputs
  consts: dict[int, Any] = {}
  source = {
    x_id: x_id
  }  # input-dependent value -> the ReLU output (or x) before it
  relus: list[tuple[int, int]] = []  # (z id, relu output id)
  segments: list[list] = [[]]

  def read(atom):
    return atom.value if isinstance(atom, Const) else consts[atom]

  for eqn in graph.eqns:
    dependent = [
      i
      for i, a in enumerate(eqn.inputs)
      if not isinstance(a, Const) and a in source
    ]
    if not dependent:  # weights, statistics: evaluate now
      outs = eqn.primitive.bind(*[read(a) for a in eqn.inputs], **eqn.params)
      outs = outs if eqn.primitive.multiple_results else [outs]
      consts.update(zip(eqn.outputs, outs))
      continue
    current = relus[-1][1] if relus else x_id
    if any(source[eqn.inputs[i]] != current for i in dependent):
      raise _not_a_chain(
        eqn, "uses a value from before the last ReLU (a skip connection)"
      )
    relu_position = _relu_input(eqn, read, dependent)
    if relu_position is not None:
      relus.append((eqn.inputs[relu_position], eqn.outputs[0]))
      source[eqn.outputs[0]] = eqn.outputs[0]
      segments.append([])
      continue
    _check_affine(eqn, dependent)
    segments[-1].append(eqn)
    source.update({v: current for v in eqn.outputs})
  if len(graph.outputs) != 1 or isinstance(graph.outputs[0], Const):
    raise ValueError("the network must return one array of logits.")
  out_id = graph.outputs[0]
  if out_id not in source:
    raise ValueError("the network's output does not depend on its input.")
  boundaries = [x_id] + [a for _, a in relus]
  targets = [z for z, _ in relus] + [out_id]
  shapes = _value_shapes(graph, leaves, consts, segments, boundaries, targets)
  if len(shapes[-1]) != 2 or shapes[-1][0] != 1:
    raise ValueError(
      f"the network must return logits of shape [1, K] for one input; got "
      f"{shapes[-1]}."
    )
  flat = tuple(
    _flat_segment(eqns, start, end, consts, shape[1:])
    for eqns, start, end, shape in zip(segments, boundaries, targets, shapes)
  )
  widths = tuple(int(np.prod(s[1:])) for s in shapes)
  return ReluChain(flat, widths, tuple(example.shape[1:]))


def _value_shapes(graph, leaves, consts, segments, boundaries, targets):
  """Shapes of x and of each segment's output, by abstract evaluation."""
  shapes = [tuple(np.shape(leaves[0]))]
  for eqns, start, end in zip(segments, boundaries, targets):
    out = jax.eval_shape(
      lambda v, eqns=eqns, start=start, end=end: _replay(
        eqns, start, end, consts, v
      ),
      jax.ShapeDtypeStruct(shapes[-1], jnp.float32),
    )
    shapes.append(tuple(out.shape))
  return shapes


def chain_logits(chain: ReluChain, x_flat: jax.Array) -> jax.Array:
  """f(x) for one flat input: [n_0] -> [K]."""
  value = x_flat
  for segment in chain.segments[:-1]:
    value = jax.nn.relu(segment(value))
  return chain.segments[-1](value)


class InputSet(NamedTuple):
  """B_p(x0, ε) ∩ [lo, hi]^n for one flat point (p in {inf, 2, 1})."""

  center: jax.Array
  eps: jax.Array
  p: float
  lower: jax.Array  # the bounding box's corners
  upper: jax.Array


def input_set(center, eps, p: float, domain=(0.0, 1.0)) -> InputSet:
  """The set with its bounding box max(x0 − ε, lo), min(x0 + ε, hi)."""
  center = jnp.asarray(center, jnp.float32).reshape(-1)
  eps = jnp.asarray(eps, jnp.float32)
  return InputSet(
    center,
    eps,
    p,
    jnp.maximum(center - eps, domain[0]),
    jnp.minimum(center + eps, domain[1]),
  )


def concretize(coeffs: jax.Array, box: InputSet):
  """min over the set of <a, x> per row, and a point attaining the bound
  of the set it was taken over (box or ball): ([S], [S, n]).

  Box: a⁺·lo + a⁻·hi at the corner. Ball: a·x0 − ε‖a‖_q at
  x0 − ε ∂‖a‖_q, clipped to the box (which keeps it in the ball, as x0 is
  in the box). For l2 and l1 the larger of the two bounds is returned.
  """
  corner = jnp.where(coeffs >= 0, box.lower, box.upper)
  box_bound = jnp.sum(coeffs * corner, axis=-1)
  if box.p == np.inf:
    return box_bound, corner
  if box.p == 2:
    # sqrt(Σa² + tiny) ≥ ‖a‖₂ (sound) and differentiable at a = 0.
    norm = jnp.sqrt(jnp.sum(coeffs**2, axis=-1, keepdims=True) + 1e-30)
    direction = coeffs / norm
  else:  # l1: the largest coefficient's coordinate
    largest = jnp.argmax(jnp.abs(coeffs), axis=-1)
    onehot = jax.nn.one_hot(largest, coeffs.shape[-1], dtype=coeffs.dtype)
    norm = jnp.max(jnp.abs(coeffs), axis=-1, keepdims=True)
    direction = onehot * jnp.sign(coeffs)
  ball_bound = coeffs @ box.center - box.eps * norm[:, 0]
  ball_point = jnp.clip(box.center - box.eps * direction, box.lower, box.upper)
  use_ball = ball_bound > box_bound
  return (
    jnp.maximum(ball_bound, box_bound),
    jnp.where(use_ball[:, None], ball_point, corner),
  )


class Relaxation(NamedTuple):
  """One ReLU layer's lines in a domain: a ≥ low·z, a ≤ up·z + intercept."""

  active: jax.Array
  unstable: jax.Array
  upper_slope: jax.Array
  intercept: jax.Array


def relax(lower, upper, split) -> Relaxation:
  """The triangle relaxation with the split's sign imposed on [l, u]."""
  lower = jnp.where(split > 0, jnp.maximum(lower, 0.0), lower)
  upper = jnp.where(split < 0, jnp.minimum(upper, 0.0), upper)
  active = lower >= 0
  unstable = ~active & (upper > 0)
  width = jnp.where(unstable, upper - lower, 1.0)
  chord = jnp.where(unstable, upper / width, 0.0)
  return Relaxation(
    active,
    unstable,
    jnp.where(active, 1.0, chord),
    jnp.where(unstable, -chord * lower, 0.0),
  )


def _pull_back(segment, n_in: int, coeffs: jax.Array):
  """(coeffs·g(0) [S], coeffs·W [S, n_in]) for an affine g(a) = W a + g(0)."""
  zero = jnp.zeros((n_in,), coeffs.dtype)
  offset, transpose = jax.vjp(segment, zero)
  pulled = jax.vmap(lambda c: transpose(c)[0])(coeffs)
  return coeffs @ offset, pulled


class LinearBound(NamedTuple):
  """Result of a backward pass.

  Attributes:
    lower: [S] lower bounds.
    relu_coeffs: per ReLU layer k < start, [S, n_k] the coefficients on
      relu(z_k) (what branching scores read).
    minimizer: [S, n_0] a point of the input set attaining each row's
      bound of the relaxed problem (a counterexample candidate).
  """

  lower: jax.Array
  relu_coeffs: tuple[jax.Array, ...]
  minimizer: jax.Array


def backward_bound(
  chain: ReluChain,
  box: InputSet,
  coeffs: jax.Array,
  layer: int,
  intervals: Sequence[tuple[jax.Array, jax.Array]],
  splits: Sequence[jax.Array],
  alphas: Sequence[jax.Array] | None = None,
  betas: Sequence[jax.Array] | None = None,
) -> LinearBound:
  """Lower bound of coeffs·z_layer over the set and the domain's splits.

  z_k is the k-th segment's output (k = 1, …, m+1; z_{m+1} are the
  logits). For each ReLU layer k < layer the pass relaxes relu(z_k) with
  ``intervals[k-1]`` (tightened by the splits), lower slopes
  ``alphas[k-1]`` (default CROWN's: 1 where u > −l) and adds −β s to the
  coefficients of z_k.

  Args:
    chain: the network.
    box: the input set.
    coeffs: [S, n_layer] specification rows.
    layer: k in 1, …, m+1.
    intervals: (l_k, u_k) of the first ``layer − 1`` ReLU layers, [n_k].
    splits: s_k in {−1, 0, +1} per layer, [n_k] (float).
    alphas: optional [S, n_k] lower slopes, clipped to [0, 1].
    betas: optional [S, n_k] split multipliers (β ≥ 0, clipped).

  Returns:
    A `LinearBound`.
  """
  bias, coeffs = _pull_back(
    chain.segments[layer - 1], chain.widths[layer - 1], coeffs
  )
  relu_coeffs = []
  for k in reversed(range(layer - 1)):  # ReLU layer k+1, input z_{k+1}
    lower, upper = intervals[k]
    lines = relax(lower, upper, splits[k])
    if alphas is None:
      slope = (upper > -lower).astype(coeffs.dtype)
    else:
      slope = jnp.clip(alphas[k], 0.0, 1.0)
    low = jnp.where(lines.active, 1.0, jnp.where(lines.unstable, slope, 0.0))
    relu_coeffs.append(coeffs)
    positive, negative = jnp.maximum(coeffs, 0.0), jnp.minimum(coeffs, 0.0)
    bias = bias + negative @ lines.intercept
    coeffs = positive * low + negative * lines.upper_slope
    if betas is not None:
      coeffs = coeffs - jnp.maximum(betas[k], 0.0) * splits[k]
    offset, coeffs = _pull_back(chain.segments[k], chain.widths[k], coeffs)
    bias = bias + offset
  value, point = concretize(coeffs, box)
  return LinearBound(bias + value, tuple(reversed(relu_coeffs)), point)


def crown_intervals(
  chain: ReluChain, box: InputSet, rows_per_pass: int = 1024
) -> list[tuple[jax.Array, jax.Array]]:
  """CROWN bounds [l_k, u_k] of every ReLU layer's input over the set.

  Layer by layer: identity rows [I; −I] over z_k, pulled back through the
  layers below with CROWN's slopes, ``rows_per_pass`` rows at a time.
  """
  intervals = []
  no_splits = [jnp.zeros((n,), jnp.float32) for n in chain.widths[1:-1]]
  for layer in range(1, chain.num_relu_layers + 1):
    width = chain.widths[layer]
    eye = jnp.eye(width, dtype=jnp.float32)
    rows = jnp.concatenate([eye, -eye], axis=0)
    lower = jnp.concatenate(
      [
        backward_bound(
          chain,
          box,
          rows[start : start + rows_per_pass],
          layer,
          intervals,
          no_splits,
        ).lower
        for start in range(0, 2 * width, rows_per_pass)
      ]
    )
    intervals.append((lower[:width], -lower[width:]))
  return intervals
