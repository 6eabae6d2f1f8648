"""Intermediate CROWN bounds: backward passes for the neurons that need them.

A ReLU-like unit (max or min with a constant, leaky ReLU) whose input
interval [l, u] does not straddle its threshold is relaxed exactly, whatever
the interval: it needs no tighter bound. So each hidden layer's backward pass
(CROWN's identity specification over the layer's neurons) is run for the
*unstable* neurons only:

  rows r = 0..R-1 bound neuron index[r] of every example (one-hot starts),

the R neurons unstable in some example of the batch (known when the bounds
are concrete; under ``jit`` every neuron is a row). A value feeding any
other nonlinearity (max pooling, smooth activations, products) has all its
neurons bounded.

The rows are taken a chunk at a time, so the coefficients of a pass stay
within a memory budget (a few chunks one after the other; many through
`lax.map`, each chunk under `jax.checkpoint` so a gradient keeps only the
chunk's inputs); the rows' results do not depend on the chunking.

The lower rows bound each neuron from below, the upper rows (negated starts)
from above; both are intersected with the current interval, so a refined
bound is never looser than the one it refines.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.bounds import leaky_relu
from cure_jax.bounds.graph import Const, Eqn, Graph
from cure_jax.bounds.interval import Interval

# Bytes of backward-pass coefficients per chunk of an intermediate layer.
DEFAULT_PASS_BYTES = 1 << 30
# Up to this many chunks are unrolled (one compiled pass each); more go
# through `lax.map`, compiled once but several times slower on XLA:CPU.
MAX_UNROLLED_CHUNKS = 8
# Coefficient-sized arrays alive at once in a rule (A, A⁺, A⁻, products).
_LIVE_COPIES = 4


class RowPlan(NamedTuple):
  """Which neurons of a value get a backward pass, in chunks.

  Attributes:
    index: [chunks, rows_per_chunk, B] flat neuron index per row and example.
    valid: [chunks, rows_per_chunk, B] False on padding rows.
    in_order: every neuron is a row, in flat order: chunk k holds neurons
      k·rows_per_chunk onwards (padding past the last), which lets a
      windowed pass read each position's data without gathering it per row.
  """

  index: jax.Array
  valid: jax.Array
  in_order: bool = False

  @property
  def chunks(self) -> int:
    return self.index.shape[0]

  @property
  def rows_per_chunk(self) -> int:
    return self.index.shape[1]


def relu_like_consumers(graph: Graph) -> dict[int, list[Eqn]]:
  """Value id -> the nonlinear equations that read it.

  Only consumers matter for a value's row plan: see `needed_neurons`.
  """
  from cure_jax.bounds import linear_rules  # noqa: PLC0415 (cycle)

  consumers: dict[int, list[Eqn]] = {}
  for eqn in graph.eqns:
    if eqn.name not in linear_rules.NONLINEAR_PRIMITIVES and eqn.name != "mul":
      continue
    for atom in eqn.inputs:
      if not isinstance(atom, Const):
        consumers.setdefault(atom, []).append(eqn)
  return consumers


def _threshold(eqn: Eqn, atom: int, read: Callable) -> jax.Array | None:
  """c of a relu-like consumer max(x, c) / min(x, c) of ``atom`` (0 for a
  leaky ReLU); None for any other consumer, or one whose c is not known yet."""
  if eqn.name == leaky_relu.NAME:
    return jnp.zeros(())
  if eqn.name not in ("max", "min") or len(eqn.inputs) != 2:
    return None
  other = eqn.inputs[1 - eqn.inputs.index(atom)]
  if other == atom:
    return None
  try:
    c = read(other)
  except KeyError:
    return None
  return None if isinstance(c, Interval) or hasattr(c, "center") else c


def needed_neurons(
  consumers: list[Eqn], atom: int, box: Interval, read: Callable
) -> jax.Array | None:
  """[B, n] mask of the neurons whose bound can change a relaxation.

  l < c < u for some relu-like consumer with threshold c; None (all neurons)
  when any consumer is another nonlinearity.
  """
  mask = jnp.zeros(box.shape, bool)
  for eqn in consumers:
    c = _threshold(eqn, atom, read)
    if c is None:
      return None
    mask = mask | ((box.lower < c) & (box.upper > c))
  return mask.reshape(box.shape[0], -1)


def is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def rows_per_chunk(
  rows: int, batch: int, largest: int, itemsize: int, pass_bytes
) -> int:
  """Rows of one chunk: ~``pass_bytes`` of coefficients over the pass's
  ``largest`` per-example value; all rows when ``pass_bytes`` is None."""
  if pass_bytes is None:
    return max(rows, 1)
  per_row = max(1, batch * largest * itemsize * _LIVE_COPIES)
  return int(min(max(rows, 1), max(1, pass_bytes // per_row)))


def plan_rows(mask: jax.Array | None, shape, per_chunk: Callable) -> RowPlan:
  """Rows for the neurons in ``mask`` ([B, n]; None: all).

  With a concrete mask the rows are the neurons needed by some example (the
  same rows for every example, so that a pass's first contraction is pulled
  back once for the batch: `intermediate`); ``valid`` marks the examples
  that need each. With a traced mask (or None), every neuron is a row.
  ``per_chunk`` maps the number of rows to rows per chunk.
  """
  batch, n = shape[0], math.prod(shape[1:])
  in_order = mask is None or not is_concrete(mask)
  if in_order:
    index = jnp.broadcast_to(jnp.arange(n)[:, None], (n, batch))
    valid = jnp.ones((n, batch), bool)
  else:
    mask = np.asarray(mask)
    rows = np.flatnonzero(mask.any(axis=0))
    index = jnp.asarray(np.broadcast_to(rows[:, None], (rows.size, batch)))
    valid = jnp.asarray(mask[:, rows].T)
  index = index.astype(jnp.int32)
  rows = index.shape[0]
  chunk = _balanced(rows, per_chunk(rows), shape[-1] if in_order else 1)
  chunks = -(-rows // chunk) if rows else 0
  pad = chunks * chunk - rows
  index = jnp.pad(index, ((0, pad), (0, 0)))
  valid = jnp.pad(valid, ((0, pad), (0, 0)))
  return RowPlan(
    index.reshape(chunks, chunk, batch),
    valid.reshape(chunks, chunk, batch),
    in_order,
  )


def _balanced(rows: int, most: int, multiple: int) -> int:
  """Rows per chunk: the fewest chunks of at most ``most`` rows, evened out
  (so the last is not mostly padding), rounded up to a multiple of
  ``multiple`` (a layer's channels: whole positions per chunk) when
  ``most`` allows one."""
  if rows == 0:
    return max(most, 1)
  chunks = -(-rows // most)
  chunk = -(-rows // chunks)
  if multiple > 1 and most >= multiple:
    chunk = min(
      -(-chunk // multiple) * multiple, -(-rows // multiple) * multiple
    )
  return chunk


def start_coefficients(index: jax.Array, shape, dtype) -> jax.Array:
  """[2R, B, *shape[1:]]: +e (lower rows) then -e (upper rows) per row."""
  n = math.prod(shape[1:])
  eye = jax.nn.one_hot(index, n, dtype=dtype).reshape(
    index.shape + tuple(shape[1:])
  )
  return jnp.concatenate([eye, -eye], axis=0)


def map_chunks(
  pass_fn: Callable[[jax.Array, dict], jax.Array],
  plan: RowPlan,
  alphas: dict | None,
  shared: dict | None,
) -> jax.Array:
  """[chunks, 2R, B] lower bounds of every chunk's rows.

  Args:
    pass_fn: (a chunk's index [R, B], slopes by id) -> [2R, B], the lower
      rows (+e) then the upper rows (-e).
    plan: the rows.
    alphas: per-row slopes {id: [chunks, 2R, ...]} or None.
    shared: slopes shared by every row {id: [1, ...]} or None.
  """

  def one_chunk(index, chunk_alphas):
    slopes = dict(shared or {})
    slopes.update(chunk_alphas)
    return pass_fn(index, slopes)

  alphas = alphas or {}
  if plan.chunks <= MAX_UNROLLED_CHUNKS:
    return jnp.stack(
      [
        one_chunk(plan.index[k], {v: a[k] for v, a in alphas.items()})
        for k in range(plan.chunks)
      ]
    )
  body = jax.checkpoint(lambda xs: one_chunk(*xs))
  return jax.lax.map(body, (plan.index, alphas))


def scatter_rows(
  lower: jax.Array, plan: RowPlan, current: Interval
) -> Interval:
  """``current`` intersected with the rows' bounds ([chunks, 2R, B])."""
  batch = current.shape[0]
  half = plan.rows_per_chunk
  index = plan.index.reshape(-1, batch)
  valid = plan.valid.reshape(-1, batch)
  below = jnp.where(valid, lower[:, :half].reshape(-1, batch), -jnp.inf)
  above = jnp.where(valid, -lower[:, half:].reshape(-1, batch), jnp.inf)
  examples = jnp.broadcast_to(jnp.arange(batch)[None], index.shape)
  flat_lower = current.lower.reshape(batch, -1)
  flat_upper = current.upper.reshape(batch, -1)
  new_lower = flat_lower.at[examples, index].max(below)
  new_upper = flat_upper.at[examples, index].min(above)
  return Interval(
    new_lower.reshape(current.shape), new_upper.reshape(current.shape)
  )
