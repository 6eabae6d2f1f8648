"""Combining the per-example l∞ and l2 losses into one objective (docs/method.md §3).

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
"""

import jax
import jax.numpy as jnp


def _check_per_example(**losses: jax.Array) -> None:
  """Raises a ValueError unless every loss is a vector, all of one length."""
  shapes = {name: jnp.shape(loss) for name, loss in losses.items()}
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
  if (
    isinstance(batch_size, bool)
    or not isinstance(batch_size, int)
    or (batch_size < 1)
  ):
    raise ValueError(
      f"batch_size must be a positive Python int (the static "
      f"batch dimension); got {batch_size!r}."
    )
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
