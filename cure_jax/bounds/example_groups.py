"""A batch bounded a few examples at a time, in one compiled program.

CROWN's bounds of one example do not depend on the others', but its
working arrays grow with the batch: each hidden layer's backward pass holds
[rows, B, ...] coefficients, 208 MB per array for the small MNIST CNN's
dense layer at B = 96. Streamed through memory instead of cache, the
relaxations and transposes that read them ran 1.3× slower per point than
the same program bounding groups of 16 examples one after the other (see
`CROWN_GROUP`; docs/verifier-benchmark.md). `in_groups` splits the batch
into groups of nearly equal size, bounds each with the same transform —
the groups are unrolled into one program (a `lax.map` over them ran at
about half the gain on XLA:CPU) — and concatenates the bounds. The bounds
are the same as for the whole batch.

Only input sets and the specification are split: every other argument of
the bounded function must be shared by the examples (weights, flags), as
the variables of ``model.apply(variables, x)`` are.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from cure_jax.bounds.sets import is_input_set

# CROWN's group in certification and in the verifier benchmark. The small
# MNIST CNN's batch of 100 in groups of at most 10, 16, 20 and 25 examples
# ran alike (9.5–9.7 ms per point), of 34 slower (12.2 ms; its dense pass's
# coefficients take 73 MB per array, against 54 MB at 25); fewer groups
# compile faster (8 s for 4 groups, 12 s for 10, 4 s for the whole batch).
CROWN_GROUP = 20


def sizes(batch: int, group: int) -> list[int]:
  """ceil(batch / group) group sizes summing to ``batch``, as equal as
  possible (they differ by at most one)."""
  count = -(-batch // group)
  base, extra = divmod(batch, count)
  return [base + 1] * extra + [base] * (count - extra)


def _batch_size(args) -> int:
  leaves = jax.tree_util.tree_leaves(args, is_leaf=is_input_set)
  batches = {s.shape[0] for s in leaves if is_input_set(s)}
  if len(batches) != 1:
    raise ValueError(
      "example groups need input sets with one batch size, got "
      f"{sorted(batches)}."
    )
  return batches.pop()


def _take(tree, start: int, stop: int):
  """The examples start:stop of every input set in ``tree`` (their array
  leaves of rank >= 1; a scalar radius is shared)."""

  def take_set(leaf):
    if not is_input_set(leaf):
      return leaf
    return jax.tree.map(
      lambda a: a[start:stop] if jnp.ndim(a) >= 1 else a, leaf
    )

  return jax.tree.map(take_set, tree, is_leaf=is_input_set)


def in_groups(bounded: Callable, group: int | None) -> Callable:
  """``bounded(*args, spec=None, **kwargs)`` over groups of at most
  ``group`` examples (None: the whole batch at once).

  Args:
    bounded: a transformed function (`crown(fn)` and the like) whose
      output's leading axis is the batch.
    group: examples per group, or None.

  Returns:
    The same function; its bounds are ``bounded``'s on the whole batch.
  """
  if group is None:
    return bounded
  if not isinstance(group, int) or group < 1:
    raise ValueError(f"example_group must be None or >= 1, got {group!r}.")

  @functools.wraps(bounded)
  def grouped(*args, spec=None, **kwargs):
    batch = _batch_size(args)
    if batch <= group:
      return bounded(*args, spec=spec, **kwargs)
    parts, start = [], 0
    for size in sizes(batch, group):
      stop = start + size
      part_spec = None if spec is None else spec[start:stop]
      parts.append(bounded(*_take(args, start, stop), spec=part_spec, **kwargs))
      start = stop
    return jax.tree.map(lambda *p: jnp.concatenate(p), *parts)

  return grouped
