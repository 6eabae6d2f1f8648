"""IBP initialization (Shi et al., 2021, "Fast Certified Robust Training with
Short Warmup", §3.2).

For ``y = W x`` with ``W_ij ~ N(0, σ²)`` and an input box of radius ``r``, IBP
gives ``y`` the radius ``|W| r``, whose expectation per unit is
``n · E|W_ij| · r = n σ √(2/π) r`` (``n`` = fan-in). Standard initializations
(σ ∝ 1/√n) therefore grow the bound radius by ~√n per layer, and the bounds
explode with depth at initialization. IBP initialization picks

  σ = √(2π) / n,   i.e.  W_ij ~ N(0, 2π / n²),

so that ``E[Σ_j |W_ij|] = n σ √(2/π) = 2``: the radius doubles through the
affine map and is approximately halved back by the ReLU that follows (for
centres symmetric about 0, about half the interval is cut off), so in
expectation it stays constant through the network.

As in the reference code (``manual_init.ibp_init``, reused by SABR and CURE),
every kernel is re-drawn except the output layer's, whose scale does not feed
another ReLU. Hidden-layer biases are set to zero, matching the analysis
(the reference keeps PyTorch's small random biases; layers followed by
BatchNorm have no bias here). BatchNorm scales/shifts and the output layer
keep their initial values.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cure_jax.models.cnn import OUTPUT_LAYER

Params = Any  # A nested dict of arrays, as in ``variables['params']``.


def ibp_std(shape: tuple[int, ...]) -> float:
  """σ = √(2π) / fan_in for a flax kernel (``[in, out]`` or
  ``[kh, kw, in, out]``: fan_in is the product of all but the last axis)."""
  fan_in = math.prod(shape[:-1])
  return math.sqrt(2 * math.pi) / fan_in


def ibp_normal(dtype: Any = jnp.float32) -> jax.nn.initializers.Initializer:
  """A flax kernel initializer drawing ``N(0, (√(2π) / fan_in)²)``.

  Use it as ``nn.Dense(..., kernel_init=ibp_normal())`` to build IBP-initialized
  layers directly; `ibp_init` re-draws an existing params tree from the same
  distribution.
  """

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = dtype):
    if len(shape) < 2:
      raise ValueError(
        f"ibp_normal initializes kernels [..., in, out]; got shape {shape}."
      )
    # A flat draw: same distribution, compiles faster on CPU than an N-D one.
    flat = jax.random.normal(key, (math.prod(shape),), dtype)
    return ibp_std(shape) * flat.reshape(shape)

  return init


def ibp_init(
  params: Params, rng: jax.Array, *, output_layer: str = OUTPUT_LAYER
) -> Params:
  """Re-initializes a params tree with IBP initialization.

  Every ``kernel`` leaf (a ``Dense`` or ``Conv`` weight) outside
  ``output_layer`` is re-drawn from ``N(0, (√(2π)/fan_in)²)`` and the ``bias``
  of its layer set to zero; all other leaves are returned unchanged. Pure and
  jit-able: ``params = ibp_init(model.init(key, x, train=False)['params'],
  key2)``.

  Raises:
    ValueError: no layer with a kernel is named ``output_layer``; the message
      lists the layers found.
  """
  flat = traverse_util.flatten_dict(params)
  layers = sorted(
    {
      path[:-1]
      for path, leaf in flat.items()
      if path[-1] == "kernel" and jnp.ndim(leaf) >= 2
    }
  )
  if not any(layer[-1] == output_layer for layer in layers):
    names = ["/".join(map(str, layer)) for layer in layers]
    raise ValueError(
      f"ibp_init found no output layer named {output_layer!r} among the "
      f"layers {names}; pass output_layer=<name of the logits layer>."
    )
  hidden = [layer for layer in layers if layer[-1] != output_layer]
  kernels = [flat[layer + ("kernel",)] for layer in hidden]
  # One N(0, 1) draw cut into the kernels: one program however many layers.
  sizes = [kernel.size for kernel in kernels]
  noise = jax.random.normal(rng, (sum(sizes),))
  offsets = np.cumsum([0] + sizes)
  for layer, kernel, start, stop in zip(hidden, kernels, offsets, offsets[1:]):
    unit = noise[start:stop].reshape(kernel.shape)
    flat[layer + ("kernel",)] = (ibp_std(kernel.shape) * unit).astype(
      kernel.dtype
    )
    if layer + ("bias",) in flat:
      flat[layer + ("bias",)] = jnp.zeros_like(flat[layer + ("bias",)])
  return traverse_util.unflatten_dict(flat)
