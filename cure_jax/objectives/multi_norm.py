"""Combining per-example losses of several threat models into one objective (docs/method.md §3).

With per-example losses L∞,i and L2,i (e.g. `robust_losses.sabr_linf` and
`robust_losses.l2_sabr_box`) CURE considers three combinations:

* `joint` (a.k.a. AVG): (1 − α)·mean L∞ + α·mean L2;
* `maximum` (Max): mean_i max(L∞,i, L2,i), the loss of the worse threat
  model per example;
* Random: a random half of the batch gets the l∞ loss, the other half the l2
  loss. `random_partition` draws the halves and `random_loss` averages the
  union. The reference code draws the halves from two independent
  permutations, so they overlap and miss examples; here they come from one
  permutation and form a true partition (docs/method.md §3, Decision).

The ``*_over`` functions are the same combinations over any number N of
threat models (e.g. l∞, l2 and l1), with the losses given as a mapping from
norm names to [B] arrays (taken in `cure_jax.types.NORMS` order) or as a
sequence (taken in its order):

* `joint_over`: Σ_n w_n·mean L_n, weights uniform by default;
* `maximum_over`: mean_i max_n L_n,i;
* `random_partition_over` / `random_loss_over`: one permutation cut into N
  parts, part n gets L_n.

For two norms they give bit for bit the results of the two-norm functions.
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from cure_jax.types import NORMS

Losses = Mapping[str, jax.Array] | Sequence[jax.Array]


def ordered(values: Mapping | Sequence, what: str = "losses") -> list:
  """The values of a norm-keyed mapping in `NORMS` order, or a sequence as is.

  Args:
    values: ``{norm: value}`` with keys among `NORMS`, or a sequence.
    what: the argument's name, for error messages.

  Returns:
    The values as a list.

  Raises:
    ValueError: for a key that is not a norm name, or fewer than one value.
  """
  if isinstance(values, Mapping):
    unknown = [name for name in values if name not in NORMS]
    if unknown:
      raise ValueError(
        f"{what} are keyed by norm names {NORMS}; got unknown keys {unknown}."
      )
    values = [values[name] for name in NORMS if name in values]
  else:
    values = list(values)
  if not values:
    raise ValueError(f"{what} is empty: give at least one threat model.")
  return values


def _check_per_example(**losses: jax.Array) -> None:
  """Raises a ValueError unless every loss is a vector, all of one length."""
  shapes = {name: jnp.shape(loss) for name, loss in losses.items()}
  _check_shapes(shapes)


def _check_shapes(shapes: dict) -> None:
  if (
    any(len(shape) != 1 for shape in shapes.values())
    or len(set(shapes.values())) != 1
  ):
    raise ValueError(
      f"expected per-example losses of one shape [B]; got {shapes}. Pass "
      "the unreduced losses (e.g. RobustLoss.loss), not their means."
    )


def joint(
  loss_linf: jax.Array, loss_l2: jax.Array, alpha: float = 0.5
) -> jax.Array:
  """The Joint (AVG) objective (1 − α)·mean L∞ + α·mean L2.

  Args:
    loss_linf: [B] per-example l∞ losses.
    loss_l2: [B] per-example l2 losses.
    alpha: weight of the l2 loss, in [0, 1] (0.5 in every reference setting).

  Returns:
    The scalar objective.

  Raises:
    ValueError: for losses that are not both [B], or ``alpha`` outside [0, 1].
  """
  _check_per_example(loss_linf=loss_linf, loss_l2=loss_l2)
  if isinstance(alpha, (int, float)) and not 0.0 <= alpha <= 1.0:
    raise ValueError(
      f"alpha weighs the l2 loss and must lie in [0, 1]; got {alpha}."
    )
  return (1.0 - alpha) * jnp.mean(loss_linf) + alpha * jnp.mean(loss_l2)


def maximum(loss_linf: jax.Array, loss_l2: jax.Array) -> jax.Array:
  """The Max objective mean_i max(L∞,i, L2,i).

  Each example contributes the loss of its worse threat model, so its
  gradient is that loss's gradient (split equally on exact ties).

  Args:
    loss_linf: [B] per-example l∞ losses.
    loss_l2: [B] per-example l2 losses.

  Returns:
    The scalar objective.

  Raises:
    ValueError: for losses that are not both [B].
  """
  _check_per_example(loss_linf=loss_linf, loss_l2=loss_l2)
  return jnp.mean(jnp.maximum(loss_linf, loss_l2))


def random_partition(
  key: jax.Array, batch_size: int
) -> tuple[jax.Array, jax.Array]:
  """Splits the batch indices 0..B−1 at random into an l∞ and an l2 half.

  One uniformly random permutation is cut into two contiguous pieces, so the
  halves are disjoint and together cover the batch. The sizes depend on B
  only (static shapes, jit-able): ⌈B/2⌉ for l∞, ⌊B/2⌋ for l2.

  Args:
    key: PRNG key; a different key gives a different partition.
    batch_size: B, a positive Python int.

  Returns:
    ``(linf_idx [⌈B/2⌉], l2_idx [⌊B/2⌋])``, int32 indices into the batch,
    e.g. ``images[linf_idx]``.

  Raises:
    ValueError: if ``batch_size`` is not a positive int.
  """
  _check_batch_size(batch_size)
  permutation = jax.random.permutation(key, batch_size)
  num_linf = (batch_size + 1) // 2
  return permutation[:num_linf], permutation[num_linf:]


def random_loss(
  loss_linf_on_half: jax.Array, loss_l2_on_half: jax.Array
) -> jax.Array:
  """The Random objective: the mean loss over the union of the two halves.

  (Σ_{i∈I∞} L∞,i + Σ_{i∈I2} L2,i) / B with B = |I∞| + |I2|, i.e. every
  example of the batch weighs 1/B whichever half it fell into.

  Args:
    loss_linf_on_half: [|I∞|] l∞ losses of the l∞ half (`random_partition`).
    loss_l2_on_half: [|I2|] l2 losses of the l2 half.

  Returns:
    The scalar objective.

  Raises:
    ValueError: for losses that are not vectors, or two empty halves.
  """
  shapes = (jnp.shape(loss_linf_on_half), jnp.shape(loss_l2_on_half))
  if any(len(shape) != 1 for shape in shapes):
    raise ValueError(
      f"expected per-example losses [|I∞|] and [|I2|]; got shapes {shapes}."
    )
  if shapes[0][0] + shapes[1][0] == 0:
    raise ValueError("both halves are empty: the batch has no example.")
  return jnp.mean(jnp.concatenate([loss_linf_on_half, loss_l2_on_half]))


def _check_batch_size(batch_size) -> None:
  if (
    isinstance(batch_size, bool)
    or not isinstance(batch_size, int)
    or batch_size < 1
  ):
    raise ValueError(
      f"batch_size must be a positive Python int (the static "
      f"batch dimension); got {batch_size!r}."
    )


def joint_over(losses: Losses, weights=None) -> jax.Array:
  """The Joint objective over N threat models, Σ_n w_n·mean L_n.

  With two norms and ``weights=(1 − α, α)`` this is `joint`: the paper's
  (1 − α)·mean L∞ + α·mean L2, computed in the same order.

  Args:
    losses: ``{norm: [B] losses}`` (`NORMS` order) or a sequence of [B].
    weights: one weight per loss, keyed or ordered like ``losses``; each
      ≥ 0, summing to 1. Default: uniform, 1/N each.

  Returns:
    The scalar objective.

  Raises:
    ValueError: for losses not all [B], weights that do not match them, or
      concrete weights that are negative or do not sum to 1.
  """
  values = ordered(losses)
  _check_shapes({i: jnp.shape(v) for i, v in enumerate(values)})
  if weights is None:
    weights = [1.0 / len(values)] * len(values)
  elif isinstance(weights, Mapping) != isinstance(losses, Mapping) or (
    isinstance(weights, Mapping) and set(weights) != set(losses)
  ):
    names = list(losses) if isinstance(losses, Mapping) else len(values)
    raise ValueError(
      "weights must be keyed (or ordered) like the losses: got "
      f"{list(weights)} for {names}."
    )
  weights = ordered(weights, "weights")
  if len(weights) != len(values):
    raise ValueError(
      f"expected one weight per loss ({len(values)}); got {len(weights)}."
    )
  if all(isinstance(w, (int, float)) for w in weights) and (
    min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6
  ):
    raise ValueError(
      f"weights must be non-negative and sum to 1; got {weights}."
    )
  total = weights[0] * jnp.mean(values[0])
  for weight, loss in zip(weights[1:], values[1:]):
    total = total + weight * jnp.mean(loss)
  return total


def maximum_over(losses: Losses) -> jax.Array:
  """The Max objective over N threat models, mean_i max_n L_n,i.

  On exact ties the gradient is split equally among the tied losses (as
  `maximum` does for two).

  Args:
    losses: ``{norm: [B] losses}`` (`NORMS` order) or a sequence of [B].

  Returns:
    The scalar objective.

  Raises:
    ValueError: for losses that are not all [B].
  """
  values = ordered(losses)
  _check_shapes({i: jnp.shape(v) for i, v in enumerate(values)})
  return jnp.mean(jnp.max(jnp.stack(values), axis=0))


def part_sizes(batch_size: int, num_parts: int) -> tuple[int, ...]:
  """Sizes of an N-part split of B: the first B mod N parts get one more.

  Args:
    batch_size: B, a positive int.
    num_parts: N, a positive int.

  Returns:
    N sizes summing to B (⌈B/2⌉, ⌊B/2⌋ for two parts).
  """
  base, extra = divmod(batch_size, num_parts)
  return tuple(base + (i < extra) for i in range(num_parts))


def random_partition_over(
  key: jax.Array, batch_size: int, num_parts: int
) -> tuple[jax.Array, ...]:
  """Splits the batch indices 0..B−1 at random into N disjoint parts.

  One uniformly random permutation cut into N contiguous pieces of the
  static sizes `part_sizes` (jit-able): disjoint, together the whole batch.
  Part n is for the n-th threat model (`NORMS` order). With N = 2 and the
  same key it is `random_partition`.

  Args:
    key: PRNG key; a different key gives a different partition.
    batch_size: B, a positive Python int.
    num_parts: N, a positive Python int (parts are empty when N > B).

  Returns:
    N int32 index arrays into the batch.

  Raises:
    ValueError: if ``batch_size`` or ``num_parts`` is not a positive int.
  """
  _check_batch_size(batch_size)
  if (
    isinstance(num_parts, bool)
    or not isinstance(num_parts, int)
    or num_parts < 1
  ):
    raise ValueError(f"num_parts must be a positive int; got {num_parts!r}.")
  permutation = jax.random.permutation(key, batch_size)
  parts, start = [], 0
  for size in part_sizes(batch_size, num_parts):
    parts.append(permutation[start : start + size])
    start += size
  return tuple(parts)


def random_loss_over(losses_on_parts: Losses) -> jax.Array:
  """The Random objective over N parts: the mean loss over their union.

  (Σ_n Σ_{i∈I_n} L_n,i) / B with B = Σ_n |I_n|: every example weighs 1/B.

  Args:
    losses_on_parts: per part, the [|I_n|] losses of its threat model on
      it, keyed by norm (`NORMS` order) or as a sequence.

  Returns:
    The scalar objective.

  Raises:
    ValueError: for losses that are not vectors, or all parts empty.
  """
  values = ordered(losses_on_parts)
  shapes = [jnp.shape(v) for v in values]
  if any(len(shape) != 1 for shape in shapes):
    raise ValueError(f"expected per-example losses [|I_n|]; got {shapes}.")
  if sum(shape[0] for shape in shapes) == 0:
    raise ValueError("every part is empty: the batch has no example.")
  return jnp.mean(jnp.concatenate(values))
