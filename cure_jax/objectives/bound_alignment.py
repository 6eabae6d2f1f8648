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
"""

import jax
import jax.numpy as jnp
import optax

DIRECTIONS = ("l2_to_linf", "linf_to_l2", "both")


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
