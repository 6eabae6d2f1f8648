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
  """Returns ``norm`` if it names a supported threat model, else raises.

  Args:
    norm: one of ``'linf'``, ``'l2'``, ``'l1'``.

  Returns:
    ``norm`` unchanged.

  Raises:
    ValueError: for any other value.
  """
  if norm not in NORMS:
    raise ValueError(f"Unknown norm {norm!r}: use one of {NORMS}.")
  return norm


def check_domain(domain: Domain) -> Domain:
  """Validates an optional ``(lo, hi)`` domain box.

  Args:
    domain: ``None`` (no clipping) or a pair of floats with ``lo <= hi``.

  Returns:
    The domain as a tuple, or ``None``.

  Raises:
    ValueError: if it is not a pair or ``lo > hi``.
  """
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
  """Rejects negative values when ``value`` is concrete (not traced).

  Args:
    name: the argument's name, for the error message.
    value: a scalar or array; traced values are not checked.

  Raises:
    ValueError: if a concrete ``value`` has a negative or NaN entry.
  """
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
  """Validates a static count such as the number of steps or restarts.

  Args:
    name: the argument's name, for the error message.
    value: a Python or NumPy integer (not a bool, float or traced value).
    minimum: the smallest allowed value.

  Returns:
    ``value`` as a Python int.

  Raises:
    ValueError: if ``value`` is not an integer >= ``minimum``.
  """
  if (
    not isinstance(value, (int, np.integer))
    or isinstance(value, bool)
    or value < minimum
  ):
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
  return int(value)


def per_example(value, x: jax.Array, name: str) -> jax.Array:
  """A scalar or per-example [B] quantity, shaped to broadcast against ``x``.

  Args:
    value: a non-negative scalar or an array of shape [B], B = ``x.shape[0]``.
    x: the [B, ...] batch it applies to.
    name: the argument's name, for error messages.

  Returns:
    ``value`` as ``x.dtype`` with shape [B, 1, ..., 1] (or [1, ..., 1] for a
    scalar), so that ``x + value * direction`` is per example.

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
  """||x_b||_p over all non-batch axes, for every example b.

  Args:
    x: [B, ...] array.
    norm: ``'linf'``, ``'l2'`` or ``'l1'``.

  Returns:
    [B] norms.
  """
  flat = flatten_examples(x)
  if check_norm(norm) == "linf":
    return jnp.max(jnp.abs(flat), axis=1)
  if norm == "l2":
    return jnp.sqrt(jnp.sum(jnp.square(flat), axis=1))
  return jnp.sum(jnp.abs(flat), axis=1)
