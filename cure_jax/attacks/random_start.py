"""Random starting points for PGD, uniform in the threat model.

* l∞: uniform in the box B∞(x, ε) ∩ domain, which is itself a box
  [max(x − ε, lo), min(x + ε, hi)] — sampled exactly.
* l2, l1: uniform in the ball B_p(x, ε) as direction × radius, then clipped
  into the domain (which keeps the point in the ball, see `projections`).
  If y has i.i.d. coordinates of density ∝ exp(−|t|^p) (Gaussian for p = 2,
  Laplace for p = 1), y / ||y||_p follows the cone measure of the unit
  sphere, and with radius ε·U^{1/D}, U ~ Uniform(0, 1), the point is uniform
  in the D-dimensional ball (Barthe, Guédon, Mendelson & Naor, "A
  probabilistic approach to the geometry of the l_p^n-ball", Ann. Probab.
  2005).
"""

import jax
import jax.numpy as jnp

from cure_jax.attacks import norms


def _uniform_radius(key: jax.Array, x: jax.Array, eps_b: jax.Array):
  """ε·U^{1/D} per example, as [B, 1, ..., 1]: the radius law of a ball."""
  num_features = norms.flatten_examples(x).shape[1]
  u = jax.random.uniform(key, x.shape[:1], dtype=x.dtype)
  return eps_b * norms.expand_per_example(u ** (1.0 / num_features), x)


def _unit_direction(key: jax.Array, x: jax.Array, norm: str) -> jax.Array:
  """y / ||y||_p per example, y ~ exp(−|t|^p): the cone measure (p = 1, 2)."""
  if norm == "l2":
    y = jax.random.normal(key, x.shape, dtype=x.dtype)
  else:
    y = jax.random.laplace(key, x.shape, dtype=x.dtype)
  length = norms.expand_per_example(norms.norm_per_example(y, norm), x)
  return y / jnp.maximum(length, 1e-30)


def sample_ball_perturbation(key: jax.Array, x: jax.Array, eps, *,
                             norm: str) -> jax.Array:
  """δ uniform in {||δ||_p <= eps}, independently per example.

  Args:
    key: PRNG key.
    x: [B, ...] clean points (fixes the shape and dtype).
    eps: radius, scalar or [B].
    norm: ``'linf'``, ``'l2'`` or ``'l1'``.

  Returns:
    [B, ...] perturbations.
  """
  eps_b = norms.per_example(eps, x, "eps")
  if norms.check_norm(norm) == "linf":
    return eps_b * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  direction_key, radius_key = jax.random.split(key)
  return _unit_direction(direction_key, x, norm) * _uniform_radius(
      radius_key, x, eps_b)


def random_start(key: jax.Array, x: jax.Array, eps, *, norm: str,
                 domain: norms.Domain = (0.0, 1.0)) -> jax.Array:
  """A point drawn uniformly from the threat model around ``x`` (see above).

  Args:
    key: PRNG key.
    x: [B, ...] clean points (inside ``domain``).
    eps: radius, scalar or [B].
    norm: ``'linf'``, ``'l2'`` or ``'l1'``.
    domain: optional ``(lo, hi)`` box.

  Returns:
    [B, ...] starting points inside the ball ∩ domain.
  """
  domain = norms.check_domain(domain)
  if norms.check_norm(norm) == "linf" and domain is not None:
    eps_b = norms.per_example(eps, x, "eps")
    lower = jnp.maximum(x - eps_b, domain[0])
    upper = jnp.minimum(x + eps_b, domain[1])
    u = jax.random.uniform(key, x.shape, dtype=x.dtype)
    return jnp.clip(lower + u * (upper - lower), lower, upper)  # Rounding.
  delta = sample_ball_perturbation(key, x, eps, norm=norm)
  return norms.clip_to_domain(x + delta, domain)
