"""Per-example certified losses over one threat model (docs/method.md §2).

Each returns a `RobustLoss`: the per-example robust cross-entropy, the
worst-case logits o = [0, −lb] (needed by bound alignment), whether the
propagated region is certified and, from a network bounded with midpoint
BatchNorm moments, the running statistics its pass updated. They are the
pieces CURE combines.

* `ibp_linf`: IBP over the whole ball B∞(x, ε) ∩ [0, 1] (Gowal et al., 2018).
* `sabr_linf`: SABR (Müller et al., ICLR 2023): PGD inside the ball, the
  point clamped into [lo + τ, hi − τ], then IBP over the small box
  B∞(c, τ) ∩ B∞(x, ε) ∩ [0, 1], τ = λ·ε (`small_box`). λ = 1 is IBP.
* `l2_sabr_box`: the reference's l2 loss: l2-PGD, then a tiny l∞ box of
  radius λ2·ε2 (λ2 = 1e-5) around the attack point — in effect l2
  adversarial training.
* `l2_certified`: our certified variant: the l2 ball B2(c, λ2·ε2) around the
  attack point c projected into B2(x, (1 − λ2)·ε2) — so the small ball lies
  inside the big one (`small_l2_ball`) — bounded exactly through the first
  affine layer by the dual norm and by IBP after it.
* `l1_certified`: its l1 analogue: the attack point of `strongest_l1`
  (sparse l1 attack and PGD, the worse per example), the l1 ball
  B1(c, λ1·ε1) ∩ [0, 1] around it inside B1(x, ε1) (`small_l1_ball`),
  bounded exactly through the first affine layer by the dual norm (the l∞
  norm of each weight row) and by IBP after it.
* `l1_crown_ibp`: CROWN-IBP (Zhang et al., ICLR 2020) over the whole ball
  B1(x, ε1) ∩ [0, 1]: IBP intermediate bounds, one backward pass from the
  margins, concretized over the l1 ball by the dual norm and over its
  bounding box, the tighter of the two.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from cure_jax.attacks import projections
from cure_jax.attacks.sabr import sabr_attack
from cure_jax.attacks.sparse_l1 import project_l1_box, strongest_l1
from cure_jax.bounds import Box, L1Ball, L2Ball, LinfBall, LpBall, crown_ibp
from cure_jax.objectives.base import (
  DOMAIN,
  Network,
  certified,
  robust_cross_entropy,
  worst_case_logits,
)


class RobustLoss(NamedTuple):
  loss: jax.Array  # [B] robust cross-entropy
  logits: jax.Array  # [B, K] worst-case logits o = [0, -lb]
  certified: jax.Array  # [B] bool: the propagated region is certified
  # Running statistics updated by a train-mode (midpoint-moment) pass, or None.
  batch_stats: Any = None


def _from_margins(margin_lower: jax.Array, batch_stats=None) -> RobustLoss:
  return RobustLoss(
    robust_cross_entropy(margin_lower),
    worst_case_logits(margin_lower),
    certified(margin_lower),
    batch_stats,
  )


def _bounded(network: Network, region, labels) -> RobustLoss:
  """The robust loss of IBP's margin bounds over ``region``."""
  margins, batch_stats = network.margin_bounds_and_stats(region, labels)
  return _from_margins(margins.lower, batch_stats)


def _per_example(value, x):
  value = jnp.asarray(value, x.dtype)
  return jnp.broadcast_to(
    value.reshape((-1,) + (1,) * (x.ndim - 1)) if value.ndim else value,
    (x.shape[0],) + (1,) * (x.ndim - 1),
  )


def _pgd_point(network: Network, images, labels, eps, key, pgd_steps, norm):
  """SABR's PGD attack point in the ``norm`` ball B_p(x, ε) ∩ [0, 1]."""
  return sabr_attack(
    network.logits,
    images,
    labels,
    eps=eps,
    key=key,
    steps=pgd_steps,
    norm=norm,
    domain=DOMAIN,
  )


def _bounded_fixed(network: Network, region, labels) -> RobustLoss:
  """`_bounded` over ``region`` held constant (no gradient through the attack)."""
  return _bounded(network, jax.lax.stop_gradient(region), labels)


def ibp_linf(network: Network, images, labels, eps) -> RobustLoss:
  """IBP robust CE over B∞(x, ε) ∩ [0, 1]."""
  return _bounded(network, LinfBall(images, eps, domain=DOMAIN), labels)


def _big_box(images, eps):
  """[lo, hi] = B∞(x, ε) ∩ [0, 1], elementwise."""
  eps = _per_example(eps, images)
  return (jnp.clip(images - eps, *DOMAIN), jnp.clip(images + eps, *DOMAIN))


def small_box_center(adversarial, images, eps, tau):
  """Clamps the attack point into [lo + τ, hi − τ] of B∞(x, ε) ∩ [0, 1].

  Where the big box is narrower than 2τ (a pixel near 0 or 1) the interval
  is empty and c = lo + τ.

  Args:
    adversarial: [B, ...] attack points.
    images: [B, ...] clean points x in [0, 1].
    eps: the big box's radius ε, scalar or [B].
    tau: the small box's radius τ ≤ ε, scalar or [B].

  Returns:
    [B, ...] centres c.
  """
  lo, hi = _big_box(images, eps)
  tau = _per_example(tau, images)
  return jnp.clip(adversarial, lo + tau, jnp.maximum(hi - tau, lo + tau))


def small_box(adversarial, images, eps, tau) -> Box:
  """SABR's propagated region B∞(c, τ) ∩ B∞(x, ε) ∩ [0, 1], c = `small_box_center`.

  The intersection keeps the region inside the threat model where the big
  box is narrower than 2τ: there the reference clamps with torch (the upper
  limit wins) and so leaves the big box near 1; here the region is then the
  whole (narrow) big box. With τ = ε the region is the big box: SABR with
  λ = 1 is IBP.

  Args:
    adversarial: [B, ...] attack points.
    images: [B, ...] clean points x in [0, 1].
    eps: the big box's radius ε, scalar or [B].
    tau: the small box's radius τ ≤ ε, scalar or [B].

  Returns:
    The region as a `Box` [B, ...].
  """
  lo, hi = _big_box(images, eps)
  center = small_box_center(adversarial, images, eps, tau)
  tau = _per_example(tau, images)
  return Box(jnp.maximum(center - tau, lo), jnp.minimum(center + tau, hi))


def sabr_linf(
  network: Network,
  images,
  labels,
  eps,
  *,
  lam: float,
  key: jax.Array,
  pgd_steps: int,
) -> RobustLoss:
  """SABR's l∞ loss: IBP over the small box of radius λε around a PGD point.

  Args:
    network: the model at this step's parameters and batch moments.
    images: [B, H, W, C] clean images in [0, 1].
    labels: [B] labels.
    eps: the l∞ radius ε (scalar or [B]).
    lam: λ ∈ (0, 1], the small box's relative size.
    key: PRNG key of the attack's random start.
    pgd_steps: attack steps.

  Returns:
    The per-example `RobustLoss` over `small_box`.
  """
  adversarial = _pgd_point(network, images, labels, eps, key, pgd_steps, "linf")
  return _bounded_fixed(
    network, small_box(adversarial, images, eps, lam * eps), labels
  )


def l2_sabr_box(
  network: Network,
  images,
  labels,
  eps,
  *,
  lam: float,
  key: jax.Array,
  pgd_steps: int,
) -> RobustLoss:
  """The reference l2 loss: IBP over an l∞ box of radius λ2·ε2 at an l2-PGD point."""
  adversarial = _pgd_point(network, images, labels, eps, key, pgd_steps, "l2")
  tau = lam * eps
  lo = jnp.zeros_like(images) + _per_example(tau, images)
  center = jax.lax.stop_gradient(jnp.clip(adversarial, lo, 1.0 - lo))
  return _bounded(network, LinfBall(center, tau, domain=DOMAIN), labels)


def small_l2_ball(adversarial, images, eps, lam) -> L2Ball:
  """B2(c, λ·ε) ∩ [0, 1] with c the attack point projected into B2(x, (1 − λ)·ε).

  ||c − x||₂ ≤ (1 − λ)·ε, so by the triangle inequality the small ball lies
  inside B2(x, ε) (clipping c into [0, 1] ∋ x only brings it closer to x).

  Args:
    adversarial: [B, ...] attack points.
    images: [B, ...] clean points x in [0, 1].
    eps: the big ball's radius ε, scalar or [B].
    lam: λ ∈ (0, 1], the small ball's relative radius.

  Returns:
    The small ball, an `L2Ball` over [0, 1].
  """
  center = projections.project_l2(
    adversarial, images, (1.0 - lam) * eps, domain=DOMAIN
  )
  return L2Ball(center, lam * eps, domain=DOMAIN)


def l2_certified(
  network: Network,
  images,
  labels,
  eps,
  *,
  lam: float,
  key: jax.Array,
  pgd_steps: int,
) -> RobustLoss:
  """Certified l2 loss: IBP over `small_l2_ball`, dual norm at layer one."""
  adversarial = _pgd_point(network, images, labels, eps, key, pgd_steps, "l2")
  return _bounded_fixed(
    network, small_l2_ball(adversarial, images, eps, lam), labels
  )


def small_l1_ball(adversarial, images, eps, lam) -> LpBall:
  """B1(c, λ·ε) ∩ [0, 1] with c the attack point projected into B1(x, (1 − λ)·ε).

  c is the Euclidean projection onto B1(x, (1 − λ)·ε) ∩ [0, 1]
  (`project_l1_box`), so ||c − x||₁ ≤ (1 − λ)·ε and by the triangle
  inequality the small ball lies inside B1(x, ε).

  Args:
    adversarial: [B, ...] attack points.
    images: [B, ...] clean points x in [0, 1].
    eps: the big ball's radius ε, scalar or [B].
    lam: λ ∈ (0, 1], the small ball's relative radius.

  Returns:
    The small ball, an `L1Ball` over [0, 1].
  """
  center = project_l1_box(adversarial, images, (1.0 - lam) * eps, DOMAIN)
  return L1Ball(center, lam * eps, domain=DOMAIN)


def l1_certified(
  network: Network,
  images,
  labels,
  eps,
  *,
  lam: float,
  key: jax.Array,
  pgd_steps: int,
) -> RobustLoss:
  """Certified l1 loss: IBP over `small_l1_ball`, dual norm at layer one.

  The attack is `strongest_l1` (cross-entropy, ``pgd_steps`` steps of each
  of its two attacks): dense-step PGD alone overestimates l1 robustness.

  Args:
    network: the model at this step's parameters and batch moments.
    images: [B, H, W, C] clean images in [0, 1].
    labels: [B] labels.
    eps: the l1 radius ε1 (scalar or [B]).
    lam: λ1 ∈ (0, 1], the small ball's relative radius (1: the whole ball,
      i.e. IBP with the exact first layer).
    key: PRNG key of the attacks' random starts.
    pgd_steps: steps of each attack.

  Returns:
    The per-example `RobustLoss` over the small ball.
  """
  adversarial = strongest_l1(
    network.logits,
    images,
    labels,
    eps=eps,
    key=key,
    steps=pgd_steps,
    domain=DOMAIN,
  )
  return _bounded_fixed(
    network, small_l1_ball(adversarial, images, eps, lam), labels
  )


def l1_crown_ibp(network: Network, images, labels, eps) -> RobustLoss:
  """CROWN-IBP robust CE over the whole ball B1(x, ε1) ∩ [0, 1].

  Args:
    network: the model at this step's parameters and (clean) batch moments;
      midpoint moments are IBP-only and raise.
    images: [B, H, W, C] clean images in [0, 1].
    labels: [B] labels.
    eps: the l1 radius ε1 (scalar or [B]).

  Returns:
    The per-example `RobustLoss`; no running statistics.
  """
  margins = network.margin_bounds(
    L1Ball(images, eps, domain=DOMAIN),
    labels,
    transform=functools.partial(crown_ibp, bound="lower"),
  )
  return _from_margins(margins.lower)
