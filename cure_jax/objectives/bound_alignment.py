"""Bound alignment (BA): align the l∞ and l2 worst-case outputs (docs/method.md §3).

With the worst-case logits o = [0, −lb] of the l∞ and of the l2 small region
(`RobustLoss.logits`; class 0 is the label), BA is the mean KL divergence
between their softmax distributions over the examples S that one threat
model already certifies: that model's distribution is the target, the other
is pulled towards it.

* ``'l2_to_linf'`` (MNIST): S = certified for l2,
  L = (1/|S|) Σ_{i∈S} KL(softmax o2,i ‖ softmax o∞,i).
* ``'linf_to_l2'`` (CIFAR-10, TinyImageNet): S = certified for l∞,
  L = (1/|S|) Σ_{i∈S} KL(softmax o∞,i ‖ softmax o2,i).
* ``'both'``: the sum of the two (the reference's ``--all`` option).

The reference uses no stop-gradient on either side; ``stop_gradient=True``
stops it through the target. L is 0 when S is empty. CURE adds λ_BA·L to the
robust loss.

`bound_alignment_over` aligns N threat models to a reference one (l∞ by
default), averaging over the other norms n:

* ``'others_to_reference'`` (generalizes ``'l2_to_linf'``): S_n = certified
  for n, L = (1/(N−1)) Σ_{n≠ref} (1/|S_n|) Σ_{i∈S_n} KL(p_n,i ‖ p_ref,i);
* ``'reference_to_others'`` (generalizes ``'linf_to_l2'``): S = certified
  for the reference, L = (1/(N−1)) Σ_{n≠ref} (1/|S|) Σ_{i∈S} KL(p_ref,i ‖ p_n,i);
* ``'both'``: their sum.

With the two norms l∞ (reference) and l2 it is `bound_alignment`, bit for bit.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from cure_jax.types import NORMS

DIRECTIONS = ("l2_to_linf", "linf_to_l2", "both")
DIRECTIONS_OVER = ("others_to_reference", "reference_to_others", "both")
# The two-norm direction each N-norm direction generalizes (reference l∞).
TWO_NORM_DIRECTION = dict(zip(DIRECTIONS_OVER, DIRECTIONS))


def _check_inputs(o_linf, o_l2, certified_linf, certified_l2) -> None:
  """Raises a ValueError that says what to fix for malformed inputs."""
  if jnp.ndim(o_linf) != 2 or jnp.shape(o_linf) != jnp.shape(o_l2):
    raise ValueError(
      f"o_linf and o_l2 must be worst-case logits of one shape [B, K]; got "
      f"{jnp.shape(o_linf)} and {jnp.shape(o_l2)}."
    )
  batch = jnp.shape(o_linf)[:1]
  for name, mask in (
    ("certified_linf", certified_linf),
    ("certified_l2", certified_l2),
  ):
    if jnp.shape(mask) != batch or jnp.result_type(mask) != jnp.bool_:
      raise ValueError(
        f"{name} must be a boolean mask of shape {batch}; got shape "
        f"{jnp.shape(mask)} and dtype {jnp.result_type(mask)}."
      )


def aligned_kl(
  o_target: jax.Array,
  o_other: jax.Array,
  selected: jax.Array,
  *,
  stop_gradient: bool = False,
) -> jax.Array:
  """(1/|S|) Σ_{i∈S} KL(softmax o_target,i ‖ softmax o_other,i), 0 if S = ∅.

  The KL of every example is finite (log-softmax of finite logits), so
  masking instead of gathering keeps static shapes and finite gradients.

  Args:
    o_target: [B, K] logits of the target distribution p.
    o_other: [B, K] logits of the distribution q pulled towards p.
    selected: [B] bool, the examples S.
    stop_gradient: stop the gradient through ``o_target``.

  Returns:
    The scalar mean divergence over S.
  """
  log_p = jax.nn.log_softmax(o_target, axis=-1)
  if stop_gradient:
    log_p = jax.lax.stop_gradient(log_p)
  log_q = jax.nn.log_softmax(o_other, axis=-1)
  kl = optax.losses.kl_divergence_with_log_targets(log_q, log_p)  # Σ p log p/q
  weights = selected.astype(kl.dtype)
  return jnp.sum(weights * kl) / jnp.maximum(jnp.sum(weights), 1.0)


def bound_alignment(
  o_linf: jax.Array,
  o_l2: jax.Array,
  certified_linf: jax.Array,
  certified_l2: jax.Array,
  *,
  direction: str = "l2_to_linf",
  stop_gradient: bool = False,
) -> jax.Array:
  """The BA loss between the l∞ and l2 worst-case logits.

  Args:
    o_linf: [B, K] worst-case logits [0, −lb] of the l∞ region.
    o_l2: [B, K] worst-case logits of the l2 region, same label order.
    certified_linf: [B] bool, examples certified for l∞ (`RobustLoss`).
    certified_l2: [B] bool, examples certified for l2.
    direction: ``'l2_to_linf'`` (target l2 on its certified set; the default,
      MNIST), ``'linf_to_l2'`` (target l∞ on its certified set; CIFAR-10 and
      TinyImageNet) or ``'both'`` (their sum).
    stop_gradient: stop the gradient through the target distribution (the
      first argument of the KL); the reference does not.

  Returns:
    The scalar loss, 0 where the selected set is empty.

  Raises:
    ValueError: for an unknown ``direction`` or malformed inputs.
  """
  if direction not in DIRECTIONS:
    raise ValueError(
      f"Unknown bound alignment direction {direction!r}: use "
      f"one of {DIRECTIONS}."
    )
  _check_inputs(o_linf, o_l2, certified_linf, certified_l2)
  loss = jnp.zeros((), jnp.result_type(o_linf, o_l2))
  if direction in ("l2_to_linf", "both"):
    loss += aligned_kl(o_l2, o_linf, certified_l2, stop_gradient=stop_gradient)
  if direction in ("linf_to_l2", "both"):
    loss += aligned_kl(
      o_linf, o_l2, certified_linf, stop_gradient=stop_gradient
    )
  return loss


def _check_over(logits, certified, reference, direction) -> list[str]:
  """Validates `bound_alignment_over`'s inputs; the other norms, in order."""
  if direction not in DIRECTIONS_OVER:
    raise ValueError(
      f"Unknown bound alignment direction {direction!r}: use one of "
      f"{DIRECTIONS_OVER}."
    )
  if not isinstance(logits, Mapping) or not isinstance(certified, Mapping):
    raise ValueError(
      "logits and certified must be mappings from norm names to arrays, "
      "e.g. {'linf': o_linf, 'l2': o_l2, 'l1': o_l1}."
    )
  if set(logits) != set(certified) or not set(logits) <= set(NORMS):
    raise ValueError(
      f"logits and certified must have the same keys among {NORMS}; got "
      f"{sorted(logits)} and {sorted(certified)}."
    )
  if reference not in logits or len(logits) < 2:
    raise ValueError(
      f"bound alignment needs the reference norm {reference!r} and at "
      f"least one other; got {sorted(logits)}."
    )
  others = [name for name in NORMS if name in logits and name != reference]
  for name in others:
    _check_inputs(
      logits[reference], logits[name], certified[reference], certified[name]
    )
  return others


def bound_alignment_over(
  logits: Mapping[str, jax.Array],
  certified: Mapping[str, jax.Array],
  *,
  reference: str = "linf",
  direction: str = "others_to_reference",
  stop_gradient: bool = False,
) -> jax.Array:
  """The BA loss between a reference norm's and N − 1 other norms' logits.

  Args:
    logits: ``{norm: [B, K] worst-case logits [0, −lb]}``, same label order.
    certified: ``{norm: [B] bool}``, the examples each norm certifies.
    reference: the norm the others are aligned with (l∞ in CURE).
    direction: ``'others_to_reference'`` (target: each other norm on its
      certified set), ``'reference_to_others'`` (target: the reference on
      its certified set) or ``'both'`` (their sum); see the module docstring.
    stop_gradient: stop the gradient through every target distribution.

  Returns:
    The scalar loss: per direction, the mean over the other norms of
    `aligned_kl` (0 for a norm whose selected set is empty).

  Raises:
    ValueError: for an unknown direction, mismatched keys, a missing
      reference, fewer than two norms or malformed arrays.
  """
  others = _check_over(logits, certified, reference, direction)
  loss = jnp.zeros((), jnp.result_type(*logits.values()))

  def mean_kl(pairs):
    """The mean over (source, target) pairs of `aligned_kl` source → target."""
    terms = [
      aligned_kl(
        logits[source],
        logits[target],
        certified[source],
        stop_gradient=stop_gradient,
      )
      for source, target in pairs
    ]
    return sum(terms[1:], terms[0]) / len(terms)

  if direction in ("others_to_reference", "both"):
    loss += mean_kl([(name, reference) for name in others])
  if direction in ("reference_to_others", "both"):
    loss += mean_kl([(reference, name) for name in others])
  return loss
