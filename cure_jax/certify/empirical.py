"""Empirical robustness: PGD robust accuracy, the upper bound of certification.

A point counts as empirically robust for a threat model when it is correctly
classified and PGD (Madry et al., ICLR 2018; `cure_jax.attacks.pgd`) finds no
misclassified point in B_p(x, ε) ∩ [0, 1]^d. Every certified point is
empirically robust, so certified ≤ PGD-robust accuracy, and the gap measures
how loose the certificates are.

The default attack is a standard strong setting: the margin loss
max_{j≠y} z_j − z_y (Carlini & Wagner, 2017), which targets a
misclassification directly, 50 steps of size α = 2.5·ε/50 (Madry et al.'s
rule: the iterate can cross the ball 2.5 times), 5 uniform random starts in
the ball, best iterate kept. The l∞ step is α·sign(g), the l2 step
α·g/||g||_2 and the l1 step SLIDE's sparse step (Tramèr & Boneh, NeurIPS
2019), all projected onto the ball ∩ [0, 1]^d.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cure_jax import attacks
from cure_jax.certify import cascade
from cure_jax.models.call_adapter import adapt_apply
from cure_jax.types import PyTree

ApplyFn = Callable[..., jax.Array]


class PGDSettings(NamedTuple):
  """The attack used for empirical robust accuracy (hashable: jit-static).

  The step is α = relative_step_size · ε / steps; a point is broken if any
  of the ``restarts`` breaks it.
  """

  steps: int = 50
  restarts: int = 5
  relative_step_size: float = 2.5
  loss: str = "margin"
  l1_sparsity: float = 0.99


def check_pgd_settings(settings: PGDSettings) -> PGDSettings:
  """Returns ``settings`` if valid, else raises a ValueError saying why."""
  if not isinstance(settings, PGDSettings):
    raise ValueError(
      f"pgd settings must be a PGDSettings, got "
      f"{type(settings).__name__}; build one with "
      "PGDSettings(steps=..., restarts=...)."
    )
  if not isinstance(settings.steps, int) or settings.steps < 1:
    raise ValueError(f"PGD steps must be an int >= 1, got {settings.steps!r}.")
  if not isinstance(settings.restarts, int) or settings.restarts < 1:
    raise ValueError(
      f"PGD restarts must be an int >= 1, got {settings.restarts!r}."
    )
  if not settings.relative_step_size > 0:
    raise ValueError(
      f"relative_step_size must be > 0, got {settings.relative_step_size}."
    )
  attacks.get_attack_loss(settings.loss)
  return settings


def pgd_robust(
  apply_fn: ApplyFn,
  variables: PyTree,
  images: jax.Array,
  labels: jax.Array,
  *,
  norm: str,
  eps,
  key: jax.Array,
  settings: PGDSettings = PGDSettings(),
) -> jax.Array:
  """[B] bool: correctly classified at x and at the attack's best point
  (pure, jit-able). ``apply_fn(variables, x, train=False)``, or a Flax module
  with ``train`` optional (`models.call_adapter`), must act on each example
  independently; ``eps`` is scalar or [B]."""
  apply_fn = adapt_apply(apply_fn)

  def logits_fn(x):
    return apply_fn(variables, x, train=False)

  x_adv = attacks.pgd(
    logits_fn,
    images,
    labels,
    norm=norm,
    eps=eps,
    steps=settings.steps,
    step_size=settings.relative_step_size * jnp.asarray(eps) / settings.steps,
    key=key,
    restarts=settings.restarts,
    random_start=True,
    loss=settings.loss,
    domain=cascade.PIXEL_DOMAIN,
    l1_sparsity=settings.l1_sparsity,
  )
  # The clean point competes in pgd, but with loss='ce' a correctly
  # classified iterate of higher loss could replace a misclassified x.
  clean_correct = ~attacks.is_adversarial(logits_fn, images, labels)
  robust = clean_correct & ~attacks.is_adversarial(logits_fn, x_adv, labels)
  if norm == "l1":  # and the sparse attack (docs/method.md §10): the stronger
    x_sparse = attacks.sparse_l1_attack(
      logits_fn,
      images,
      labels,
      eps=eps,
      steps=settings.steps,
      key=jax.random.fold_in(key, 1),
      restarts=settings.restarts,
      loss=settings.loss,
      domain=cascade.PIXEL_DOMAIN,
    )
    robust &= ~attacks.is_adversarial(logits_fn, x_sparse, labels)
  return robust


def _pgd_robust(apply_fn, norm, settings, variables, images, labels, eps, key):
  """`pgd_robust` with positional static arguments first, for `jax.jit`."""
  return pgd_robust(
    apply_fn,
    variables,
    images,
    labels,
    norm=norm,
    eps=eps,
    key=key,
    settings=settings,
  )


pgd_robust_jit = jax.jit(_pgd_robust, static_argnums=(0, 1, 2))
