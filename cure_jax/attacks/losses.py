"""Per-example attack objectives (maximized by the attack) and success test.

* ``'ce'``: cross-entropy CE(f(x), y) = logsumexp(z) − z_y, the loss SABR's
  attack maximizes (docs/method.md §2).
* ``'margin'``: max_{j≠y} z_j − z_y (Carlini & Wagner, "Towards Evaluating
  the Robustness of Neural Networks", S&P 2017, on logits). It is positive
  exactly when some other class beats y, so maximizing it searches for a
  misclassification directly.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

AttackLoss = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """CE per example: logsumexp(z) − z_y, [B, K] × [B] -> [B]."""
  return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """max_{j≠y} z_j − z_y per example (> 0 iff misclassified, up to ties);
  [B, K] (K >= 2) × [B] -> [B]."""
  is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  label_logit = jnp.sum(jnp.where(is_label, logits, 0.0), axis=-1)
  best_other = jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1)
  return best_other - label_logit


ATTACK_LOSSES = {"ce": cross_entropy, "margin": margin}


def get_attack_loss(name: str) -> AttackLoss:
  """The objective ``(logits [B, K], labels [B]) -> [B]`` to maximize called
  ``name`` in `ATTACK_LOSSES`; ValueError for an unknown name."""
  if name not in ATTACK_LOSSES:
    raise ValueError(
      f"Unknown attack loss {name!r}: use one of {tuple(ATTACK_LOSSES)}."
    )
  return ATTACK_LOSSES[name]


def misclassified(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """argmax z ≠ y per example ([B] bool)."""
  return jnp.argmax(logits, axis=-1) != labels


def is_adversarial(
  logits_fn: Callable[[jax.Array], jax.Array], x_adv: jax.Array, y: jax.Array
) -> jax.Array:
  """[B] bool: argmax logits_fn(x_adv) ≠ y.

  For points from ``pgd(..., loss='margin')``, ``mean(~is_adversarial(...))``
  is the empirical robust accuracy, an upper bound on certified accuracy (the
  clean point is the attack's first candidate, so a misclassified clean point
  stays misclassified).
  """
  return misclassified(logits_fn(x_adv), y)
