"""Batch normalization whose eval mode is a per-channel affine map of the input.

Certified training bounds the network with the *clean* batch's statistics
(docs/method.md §2): the clean forward pass normalizes with the batch
moments, and the bounded pass over the same batch treats those moments as
constants, so every BatchNorm becomes the input-independent affine map

  y = (x − μ) · γ / √(σ² + ε) + β.

`BatchNorm` exposes this through two collections:

* ``'batch_stats'`` — the running statistics ``{'mean', 'var'}``, read in eval
  mode (``train=False``) and updated in train mode;
* ``'batch_moments'`` — the batch's own ``{'mean', 'var'}``, written in train
  mode, with the same structure as ``'batch_stats'``.

The bounded pass during training is therefore::

  logits, state = model.apply({'params': p, 'batch_stats': bs}, x, train=True,
                              mutable=['batch_stats', 'batch_moments'])
  bounds = ibp(model.apply)({'params': p,
                             'batch_stats': state['batch_moments']},
                            LinfBall(x, eps), train=False)

and at ``x`` itself it reproduces ``logits`` exactly, because train mode applies
the very same affine map to the very same moments.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from cure_jax.bounds.midpoint import midpoint

RUNNING_STATS = "batch_stats"
BATCH_MOMENTS = "batch_moments"


def batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel ``(mean, var)``, each ``[C]``, over all axes of ``[..., C]``
  but the last; ``var = mean((x − mean)²)`` is biased."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  return mean, var


def normalize(
  x: jax.Array,
  mean: jax.Array,
  var: jax.Array,
  scale: jax.Array,
  bias: jax.Array,
  epsilon: float,
) -> jax.Array:
  """The affine map ``(x − mean) · scale / √(var + ε) + bias`` (per channel).

  Only ``sub``, ``mul`` and ``add`` touch ``x``; everything else is a constant
  of the input, which keeps the map exact under every bound transform.
  """
  multiplier = scale * jax.lax.rsqrt(var + epsilon)
  return (x - mean) * multiplier + bias


class BatchNorm(nn.Module):
  """Batch normalization over every axis but the last (the channels).

  ``train=True`` normalizes with the batch's mean and biased variance, and
  ``train=False`` with whatever ``'batch_stats'`` holds: the running statistics
  at test time, or a clean batch's ``'batch_moments'`` in the bounded pass of
  certified training (see the module docstring).

  In train mode the collections are written only when the caller makes them
  mutable, so extra train-mode passes over a batch (e.g. an attack) can read the
  batch statistics without touching the running averages:

  * ``'batch_stats'`` mutable: running averages updated like PyTorch's
    ``BatchNorm`` with ``momentum = 1 − self.momentum``:
    ``r ← m·r + (1 − m)·batch``, where the batch variance entering the running
    average is the unbiased one, ``var · n / (n − 1)`` (n values per channel).
  * ``'batch_moments'`` mutable: the batch's ``{'mean', 'var'}`` (biased
    variance, exactly what normalized this batch) are stored.

  Neither is written during ``Module.init``, so initial variables hold only
  ``'params'`` and ``'batch_stats'`` (running mean 0, running variance 1).
  Defaults match PyTorch (momentum 0.9 ≙ PyTorch's 0.1, ε = 1e-5).
  """

  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Normalizes ``x [B, ..., C]`` with the batch's moments (``train``) or
    with ``'batch_stats'``.

    Raises:
      ValueError: ``x`` is not at least 2-D, or in train mode holds a single
        value per channel (its variance would be undefined).
    """
    if x.ndim < 2:
      raise ValueError(
        f"BatchNorm expects activations [batch, ..., channels]; got shape "
        f"{x.shape}. Add a batch axis."
      )
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    running_mean = self.variable(RUNNING_STATS, "mean", jnp.zeros, (features,))
    running_var = self.variable(RUNNING_STATS, "var", jnp.ones, (features,))

    if not train:
      return normalize(
        x, running_mean.value, running_var.value, scale, bias, self.epsilon
      )

    count = x.size // features
    if count < 2:
      raise ValueError(
        f"BatchNorm in train mode needs more than one value per channel to "
        f"estimate a variance; got shape {x.shape}. Use a larger batch, or "
        f"train=False to normalize with the running statistics."
      )
    # On data midpoint(x) is x; bounded in train mode, the moments are those
    # of the bounds' centres (`cure_jax.bounds.midpoint`).
    mean, var = batch_moments(midpoint(x))
    if not self.is_initializing():
      self._record(mean, var, count, running_mean, running_var)
    return normalize(x, mean, var, scale, bias, self.epsilon)

  def _record(self, mean, var, count, running_mean, running_var):
    """Stores the batch moments and updates the running stats, if mutable."""
    if self.is_mutable_collection(BATCH_MOMENTS):
      self.put_variable(BATCH_MOMENTS, "mean", mean)
      self.put_variable(BATCH_MOMENTS, "var", var)
    if self.is_mutable_collection(RUNNING_STATS):
      unbiased_var = var * (count / (count - 1))
      m = self.momentum
      running_mean.value = m * running_mean.value + (1 - m) * mean
      running_var.value = m * running_var.value + (1 - m) * unbiased_var
