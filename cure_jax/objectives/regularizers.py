"""Regularizers of certified training: l1 on the parameters, IBP warm-up terms.

* `l1_penalty`: Σ|θ|. The SABR and CURE reference code adds
  ``l1 · Σ |x|`` over ``net.parameters()``, i.e. over every trainable
  parameter: convolution and dense kernels *and* biases and the BatchNorm
  scales and offsets (running statistics are buffers, not parameters).
  `l1_penalty` does the same by default; ``kernels_only=True`` restricts it
  to the kernels.
* `warmup_regularizer`: the two regularizers of Shi, Wang, Zhang, Yi & Hsieh,
  "Fast Certified Robust Training with Short Warmup" (NeurIPS 2021), as the
  SABR/CURE code computes them (``compute_bound_reg``) from the IBP bounds
  [l, u] entering each ReLU. Per layer, with center c = (u + l)/2:

  - tightness: relu(τ − r_in / max(mean((u − l)/2), 1e-12)) / τ, which
    penalizes bounds that grow much wider than the input box (mean radius
    r_in) across the network;
  - ReLU balance: with the active (l > 0) and inactive (u < 0) neurons,
    m_act = mean(c·[act]), m_inact = mean(c·[inact]),
    v_act = Σ (c − mean c)²·[act], v_inact = Σ (c − mean c)²·[inact] (means
    and sums over the whole layer, batch included), the ratios
    ρ_m = m_act / −m_inact and ρ_v = v_act / v_inact are folded to
    min(ρ, 1/max(ρ, 1e-12)) ∈ [0, 1], and the term is
    (relu(τ − ρ_m) + relu(τ − ρ_v)) / τ; it is dropped where the reference
    gets NaN or ±∞.

  The result is (Σ tightness + Σ balance) / #layers; the caller scales it by
  0.5·(1 − ε/ε_end) during the ε ramp (`StepContext.reg_scale`).
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from cure_jax.bounds import Interval

Params = Any
_MIN_RATIO = 1e-12  # The reference's clamp of radii and ratios.


def _is_kernel(path) -> bool:
  last = path[-1] if path else None
  return getattr(last, "key", getattr(last, "name", None)) == "kernel"


def l1_penalty(params: Params, *, kernels_only: bool = False) -> jax.Array:
  """Σ |θ| over the parameters, as the SABR/CURE reference code.

  Args:
    params: the model's ``'params'`` collection (no BatchNorm statistics).
    kernels_only: sum over the Flax ``kernel`` leaves only (convolution and
      dense weights), leaving out biases and BatchNorm scales/offsets.

  Returns:
    The scalar penalty (float32 or wider); multiply it by the l1 weight.

  Raises:
    ValueError: if no parameter is selected.
  """
  leaves = [
    leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    if not kernels_only or _is_kernel(path)
  ]
  if not leaves:
    raise ValueError(
      "no parameters to penalize: pass the model's 'params' collection"
      + (
        " (kernels_only=True found no 'kernel' leaf)." if kernels_only else "."
      )
    )
  dtype = jnp.promote_types(jnp.result_type(*leaves), jnp.float32)
  return sum(jnp.sum(jnp.abs(leaf).astype(dtype)) for leaf in leaves)


def _tightness(bounds: Interval, input_radius, tol: float) -> jax.Array:
  """relu(τ − r_in / max(mean radius, 1e-12)) / τ for one layer."""
  radius = jnp.mean(bounds.radius)
  return jax.nn.relu(tol - input_radius / jnp.maximum(radius, _MIN_RATIO)) / tol


def _folded_ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """min(ρ, 1/max(ρ, 1e-12)) for ρ = numerator / denominator, denominator > 0.

  Elsewhere the division is by 1 (double-`where`: the masked-out branch
  then has a finite gradient); callers mask those entries.
  """
  ratio = numerator / jnp.where(denominator > 0, denominator, 1.0)
  return jnp.minimum(ratio, 1.0 / jnp.maximum(ratio, _MIN_RATIO))


def _relu_balance(bounds: Interval, tol: float) -> jax.Array:
  """The ReLU balance term of one layer, 0 where the reference skips it."""
  lower, upper = bounds
  center = bounds.center
  active, inactive = lower > 0, upper < 0
  mean_active = jnp.mean(jnp.where(active, center, 0.0))
  mean_inactive = jnp.mean(jnp.where(inactive, center, 0.0))  # <= 0
  delta = (center - jnp.mean(center)) ** 2
  var_active = jnp.sum(jnp.where(active, delta, 0.0))
  var_inactive = jnp.sum(jnp.where(inactive, delta, 0.0))

  # The reference divides and drops NaN/±∞ results. ρ_m is undefined without
  # inactive neurons: m_act / −(+0) is −∞ or NaN (all-active layers are thus
  # skipped). ρ_v = v_act / 0 is +∞, folded to 0, unless v_act = 0 (NaN).
  mean_ratio = _folded_ratio(mean_active, -mean_inactive)
  var_ratio = jnp.where(
    var_inactive > 0, _folded_ratio(var_active, var_inactive), 0.0
  )
  defined = (mean_inactive < 0) & ((var_inactive > 0) | (var_active > 0))
  term = (jax.nn.relu(tol - mean_ratio) + jax.nn.relu(tol - var_ratio)) / tol
  return jnp.where(defined, term, 0.0)


def warmup_regularizer(
  preactivations: Sequence[Interval], input_radius, tol: float = 0.5
) -> jax.Array:
  """Shi et al.'s (2021) warm-up regularizers, as in the SABR/CURE code.

  Args:
    preactivations: the IBP `Interval` entering each ReLU, in order, e.g.
      from ``ibp(model.apply, return_preactivations=True)``.
    input_radius: r_in, the mean half-width of the input box. The reference
      takes it where the first affine layer reads it, i.e. after the input
      normalization: for a model that normalizes internally, pass the mean
      of (u − l)/2 / std over the input box rather than the pixel radius.
    tol: the tolerance τ of both terms (0.5 in the reference).

  Returns:
    The scalar (Σ tightness + Σ balance) / #layers, unscaled. It is finite,
    and so is its gradient, also for layers without active or inactive
    neurons.

  Raises:
    ValueError: if ``preactivations`` is empty or ``tol`` is not positive.
  """
  if not preactivations:
    raise ValueError(
      "preactivations is empty: pass the bounds entering each "
      "ReLU, e.g. from ibp(fn, return_preactivations=True)."
    )
  if isinstance(tol, (int, float)) and tol <= 0:
    raise ValueError(f"tol must be positive; got {tol}.")
  total = sum(
    _tightness(Interval(*bounds), input_radius, tol)
    + _relu_balance(Interval(*bounds), tol)
    for bounds in preactivations
  )
  return total / len(preactivations)
