"""Threat models shared by the attacks: norm names, per-example radii, domain.

An attack perturbs a batch ``x`` of shape [B, ...] inside, per example,

  {x' : ||x' - x||_p <= eps} ∩ domain,

with the norm taken over all non-batch axes, p one of `NORMS`, ``eps`` a
scalar or one radius per example [B], and ``domain`` an optional box
``(lo, hi)`` (``(0., 1.)`` for images, so that pixels stay valid).

Radii are checked for sign only when they are concrete: under ``jit`` a traced
radius cannot be inspected without a host sync, exactly as in
`cure_jax.bounds`.
"""

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.types import NORMS, Domain


def check_norm(norm: str) -> str:
  """Returns ``norm`` if it is one of `NORMS`, else raises ValueError."""
  if norm not in NORMS:
    raise ValueError(f"Unknown norm {norm!r}: use one of {NORMS}.")
  return norm


def check_domain(domain: Domain) -> Domain:
  """Returns ``None`` (no clipping) or ``(lo, hi)`` as a tuple; ValueError if
  it is not a pair or ``lo > hi``."""
  if domain is None:
    return None
  try:
    lo, hi = domain
  except (TypeError, ValueError):
    raise ValueError(
      f"domain must be None or a pair (lo, hi), got {domain!r}."
    ) from None
  if lo > hi:
    raise ValueError(f"domain lower bound {lo} exceeds upper bound {hi}.")
  return (lo, hi)


def clip_to_domain(x: jax.Array, domain: Domain) -> jax.Array:
  """Clips ``x`` into the ``domain`` box (identity when it is ``None``)."""
  if domain is None:
    return x
  lo, hi = domain
  return jnp.clip(x, lo, hi)


def check_nonnegative(name: str, value) -> None:
  """Raises ValueError naming ``name`` if a concrete ``value`` has a negative
  or NaN entry; traced values are not checked."""
  try:
    concrete = np.asarray(value)
  except (
    TypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.ConcretizationTypeError,
  ):
    return  # Traced under jit: checking would need a host sync.
  if concrete.dtype.kind in "fiu" and not np.all(concrete >= 0):
    raise ValueError(f"{name} must be non-negative, got {concrete.min()}.")


def check_count(name: str, value, minimum: int) -> int:
  """Returns a static count (steps, restarts) as a Python int; ValueError
  unless it is a Python or NumPy integer (not bool) >= ``minimum``."""
  if (
    not isinstance(value, (int, np.integer))
    or isinstance(value, bool)
    or value < minimum
  ):
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
  return int(value)


def per_example(value, x: jax.Array, name: str) -> jax.Array:
  """A non-negative scalar or [B] ``value`` as ``x.dtype``, shaped
  [B, 1, ..., 1] (or scalar) so that ``x + value * direction`` is per example.

  Raises:
    ValueError: if the shape is neither () nor [B], or a concrete value is
      negative.
  """
  check_nonnegative(name, value)
  value = jnp.asarray(value, dtype=x.dtype)
  if value.shape not in ((), x.shape[:1]):
    raise ValueError(
      f"{name} of shape {value.shape} does not fit a batch of shape "
      f"{x.shape}: it must be a scalar or have shape {x.shape[:1]} (one "
      "value per example)."
    )
  return value.reshape(value.shape + (1,) * (x.ndim - value.ndim))


def flatten_examples(x: jax.Array) -> jax.Array:
  """Reshapes [B, ...] to [B, D] (one row per example)."""
  return x.reshape(x.shape[0], -1)


def expand_per_example(values: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes per-example [B] values to [B, 1, ..., 1] to broadcast with x."""
  return values.reshape(values.shape[:1] + (1,) * (x.ndim - 1))


def norm_per_example(x: jax.Array, norm: str) -> jax.Array:
  """[B] norms ||x_b||_p over all non-batch axes."""
  flat = flatten_examples(x)
  if check_norm(norm) == "linf":
    return jnp.max(jnp.abs(flat), axis=1)
  if norm == "l2":
    return jnp.sqrt(jnp.sum(jnp.square(flat), axis=1))
  return jnp.sum(jnp.abs(flat), axis=1)
