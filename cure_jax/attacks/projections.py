"""Projections of attack iterates back into the threat model.

Every projection maps an iterate ``x_adv`` to a point of
{x' : ||x' - x||_p <= eps} ∩ domain, per example, in two steps:

1. project the perturbation δ = x_adv - x onto the l_p ball of radius eps
   (Euclidean projection; exact for all three norms);
2. clip x + δ into the domain box.

Step 2 never leaves the ball when x lies in the domain: clipping moves each
coordinate of x + δ towards x, so |δ_i| only shrinks and ||δ||_p with it.
For l∞ the two steps are the exact projection onto the intersection (a box);
for l2 and l1 this is the standard PGD projection (docs/method.md §2,
**Decision**: x_adv = x + Π_{||δ||_2 <= ε}(δ), then clip — the reference
adds the clipped perturbation to the iterate and can leave the ball).
"""

import jax
import jax.numpy as jnp

from cure_jax.attacks import norms

_TINY = 1e-30  # Guards divisions by a zero norm (the other branch is taken).


def project_onto_l1_ball(v: jax.Array, radius: jax.Array) -> jax.Array:
  """Euclidean projection of a vector onto {w : ||w||_1 <= radius}.

  Sort-based algorithm of Duchi, Shalev-Shwartz, Singer & Chandra, "Efficient
  Projections onto the l1-Ball for Learning in High Dimensions" (ICML 2008),
  Fig. 1 and §4: outside the ball the projection is soft thresholding
  w_i = sign(v_i)·max(|v_i| − θ, 0), with μ = |v| sorted decreasingly,
  ρ = max{j : μ_j − (Σ_{r<=j} μ_r − radius)/j > 0} and
  θ = (Σ_{r<=ρ} μ_r − radius)/ρ. Inside the ball v is returned unchanged, so
  the projection is idempotent. Unlike ``optax.projections.projection_l1_ball``
  it does not divide by the radius, so radius 0 gives w = 0 (ρ is then
  clamped to 1 and θ = max|v|) rather than NaN. ``v`` is [D] (vmap it for a
  batch), ``radius`` a non-negative scalar.
  """
  magnitude = jnp.abs(v)
  mu = jnp.sort(magnitude)[::-1]
  cumulative = jnp.cumsum(mu)
  j = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
  rho = jnp.maximum(jnp.sum(mu - (cumulative - radius) / j > 0), 1)
  theta = (cumulative[rho - 1] - radius) / rho.astype(v.dtype)
  shrunk = jnp.sign(v) * jnp.maximum(magnitude - theta, 0.0)
  return jnp.where(jnp.sum(magnitude) <= radius, v, shrunk)


def project_linf(
  x_adv: jax.Array, x: jax.Array, eps, domain: norms.Domain = (0.0, 1.0)
) -> jax.Array:
  """Projects onto {x' : ||x' − x||_∞ <= eps} ∩ domain (exact: a box)."""
  radius = norms.per_example(eps, x, "eps")
  return norms.clip_to_domain(jnp.clip(x_adv, x - radius, x + radius), domain)


def project_l2(
  x_adv: jax.Array, x: jax.Array, eps, domain: norms.Domain = (0.0, 1.0)
) -> jax.Array:
  """x + Π_{||δ||_2 <= eps}(x_adv − x), then clipped into ``domain``.

  The l2 projection rescales δ by min(1, eps/||δ||_2).
  """
  radius = norms.per_example(eps, x, "eps")
  delta = x_adv - x
  length = norms.expand_per_example(norms.norm_per_example(delta, "l2"), x)
  scale = jnp.where(length > radius, radius / jnp.maximum(length, _TINY), 1.0)
  return norms.clip_to_domain(x + scale * delta, domain)


def project_l1(
  x_adv: jax.Array, x: jax.Array, eps, domain: norms.Domain = (0.0, 1.0)
) -> jax.Array:
  """x + Π_{||δ||_1 <= eps}(x_adv − x), then clipped into ``domain``.

  The l1 projection is `project_onto_l1_ball`, vmapped over examples.
  """
  radius = jnp.broadcast_to(
    norms.per_example(eps, x, "eps").reshape(-1), x.shape[:1]
  )
  delta = norms.flatten_examples(x_adv - x)
  delta = jax.vmap(project_onto_l1_ball)(delta, radius)
  return norms.clip_to_domain(x + delta.reshape(x.shape), domain)


_PROJECTIONS = {"linf": project_linf, "l2": project_l2, "l1": project_l1}


def project(
  x_adv: jax.Array,
  x: jax.Array,
  eps,
  *,
  norm: str,
  domain: norms.Domain = (0.0, 1.0),
) -> jax.Array:
  """Projects iterates [B, ...] onto the ``norm`` ball of radius ``eps``
  (scalar or [B]) around ``x`` (inside ``domain``), ∩ ``domain``."""
  return _PROJECTIONS[norms.check_norm(norm)](
    x_adv, x, eps, norms.check_domain(domain)
  )
