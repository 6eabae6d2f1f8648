"""Per-channel input normalization, the first op of every model.

Perturbation radii are measured in [0, 1] pixel space (docs/method.md §5), so
the models take raw pixels and normalize them themselves: ``(x − mean) / std``,
a subtraction and a division by constants that every bound transform
propagates exactly. The datasets' (mean, std) live in
`cure_jax.config_schema.INPUT_NORMALIZATION`, which config files read
without importing JAX.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from cure_jax.config_schema import INPUT_NORMALIZATION  # noqa: F401 (re-exported)


def normalize_input(
  x: jax.Array, mean: Sequence[float] | None, std: Sequence[float] | None
) -> jax.Array:
  """Returns ``(x − mean) / std`` per channel of ``[..., C]``, or ``x`` if
  both are None.

  Raises:
    ValueError: only one of ``mean`` and ``std`` is given, their lengths differ
      from the channel count, or some ``std`` is not positive.
  """
  if mean is None and std is None:
    return x
  if mean is None or std is None:
    raise ValueError(
      "Input normalization needs both mean and std (or neither); got "
      f"mean={mean}, std={std}."
    )
  channels = x.shape[-1]
  if len(mean) != channels or len(std) != channels:
    raise ValueError(
      f"Input normalization has {len(mean)} means and {len(std)} stds but "
      f"the input has {channels} channels (shape {x.shape}); give one value "
      "per channel (channels last, NHWC)."
    )
  if min(std) <= 0:
    raise ValueError(f"Input normalization std must be positive; got {std}.")
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)
