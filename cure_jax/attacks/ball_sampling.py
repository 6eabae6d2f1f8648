"""Random starting points for PGD, uniform in the threat model.

* l∞: uniform in the box B∞(x, ε) ∩ domain, which is itself a box
  [max(x − ε, lo), min(x + ε, hi)] — sampled exactly.
* l2, l1: uniform in the ball B_p(x, ε), then clipped into the domain (which
  keeps the point in the ball, see `projections`). By Barthe, Guédon,
  Mendelson & Naor ("A probabilistic approach to the geometry of the
  l_p^n-ball", Ann. Probab. 2005), if y ∈ R^D has i.i.d. coordinates of
  density ∝ exp(−|t|^p) and Z ~ Exp(1) is independent, then
  y / (||y||_p^p + Z)^{1/p} is uniform in the unit l_p ball of R^D. Z can be
  drawn in the same call as y: for p = 1 it is |t| of one more Laplace
  coordinate; for p = 2 it is the squared norm of two more Gaussian
  coordinates (of variance 1/2). So we draw D + 1 (l1) or D + 2 (l2)
  coordinates, divide by the l_p norm of all of them and keep the first D
  (for p = 2: a uniform point of the unit sphere of R^{D+2} with two
  coordinates dropped, as in Voelker, Gosmann & Stewart, "Efficiently
  sampling vectors and coordinates from the n-sphere and n-ball", 2017). One
  random draw per start keeps the compiled attack small.
"""

import jax
import jax.numpy as jnp

from cure_jax.attacks import norms

# Extra coordinates whose l_p^p mass plays the role of Z ~ Exp(1).
_EXTRA_COORDINATES = {"l2": 2, "l1": 1}


def _uniform_in_unit_ball(key: jax.Array, x: jax.Array, norm: str) -> jax.Array:
  """[B, ...] points uniform in the unit ``norm`` ball (l2 or l1)."""
  num_features = norms.flatten_examples(x).shape[1]
  shape = (x.shape[0], num_features + _EXTRA_COORDINATES[norm])
  if norm == "l2":
    y = jax.random.normal(key, shape, dtype=x.dtype)
  else:
    y = jax.random.laplace(key, shape, dtype=x.dtype)
  length = norms.norm_per_example(y, norm)[:, None]
  return (y[:, :num_features] / jnp.maximum(length, 1e-30)).reshape(x.shape)


def sample_ball_perturbation(
  key: jax.Array, x: jax.Array, eps, *, norm: str
) -> jax.Array:
  """δ [B, ...] uniform in {||δ||_p <= eps} (eps scalar or [B]), independently
  per example; ``x`` fixes shape and dtype."""
  eps_b = norms.per_example(eps, x, "eps")
  if norms.check_norm(norm) == "linf":
    return eps_b * jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  return eps_b * _uniform_in_unit_ball(key, x, norm)


def random_start(
  key: jax.Array,
  x: jax.Array,
  eps,
  *,
  norm: str,
  domain: norms.Domain = (0.0, 1.0),
) -> jax.Array:
  """A point of ball ∩ domain around ``x`` (inside ``domain``), drawn as the
  module doc says; eps scalar or [B]."""
  domain = norms.check_domain(domain)
  if norms.check_norm(norm) == "linf" and domain is not None:
    eps_b = norms.per_example(eps, x, "eps")
    lower = jnp.maximum(x - eps_b, domain[0])
    upper = jnp.minimum(x + eps_b, domain[1])
    u = jax.random.uniform(key, x.shape, dtype=x.dtype)
    return jnp.clip(lower + u * (upper - lower), lower, upper)  # Rounding.
  delta = sample_ball_perturbation(key, x, eps, norm=norm)
  return norms.clip_to_domain(x + delta, domain)
