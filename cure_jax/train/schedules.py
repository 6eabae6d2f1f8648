"""Schedules of certified training, as pure functions of the step (optax style).

Each constructor validates its arguments once and returns
``schedule(step) -> value``, jit-able, where ``step`` is the 0-based index of
the optimizer update being computed (``optax``'s ``count``). Epoch-based
settings of the reference convert with ``step = epoch · steps_per_epoch``.

* `smoothed_eps_schedule`: the ε ramp of auto_LiRPA's ``SmoothedScheduler``
  (CURE docs/method.md §4).
* `kappa_schedule`: weight κ of the clean cross-entropy (docs/method.md §3).
* `multistep_lr_schedule`: learning rate decayed at milestones
  (docs/method.md §4).
* `warmup_regularizer_scale`: weight of Shi et al.'s warm-up regularizers,
  a function of the current ε rather than of the step (docs/method.md §3).
"""

import math
from collections.abc import Sequence

import chex
import jax.numpy as jnp
import optax


def _check_step(value, name: str) -> None:
  """Raises a ValueError unless ``value`` is a non-negative int."""
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise ValueError(f"{name} must be a non-negative int step; got {value!r}.")


def smoothed_eps_schedule(
  final_eps: float,
  start_step: int,
  end_step: int,
  mid_fraction: float = 0.25,
  degree: float = 4.0,
) -> optax.Schedule:
  """ε ramp of auto_LiRPA's ``SmoothedScheduler``: polynomial, then linear.

  With a = ``start_step``, b = ``end_step``, F = ``final_eps``, d = ``degree``,
  the switch point m = a + ⌊(b − a) · mid_fraction⌋ (auto_LiRPA's ``int()``),
  P = m − a and L = b − m::

    ε(s) = 0                                   s ≤ a
         = α (s − a)^d                         a < s < m
         = min(ε_m + (F − ε_m)(s − m)/L, F)    s ≥ m

  with ε_m = α P^d. Matching the slopes at m, α d P^(d−1) = (F − α P^d)/L,
  gives α = F / (P^(d−1) (d L + P)), so ε is continuous with a continuous
  derivative, reaches F at b and stays there.

  auto_LiRPA's ``SmoothedScheduler(F, "start=S,length=N")`` with E batches per
  (1-based) epoch equals this schedule with ``start_step = (S − 1) E`` and
  ``end_step = (S + N − 1) E``, evaluated at the 0-based global batch index.

  Degenerate ramps: if P = 0 the ramp is linear from a to b; if a = b, ε jumps
  from 0 to F at b.

  Raises:
    ValueError: unless F ≥ 0, 0 ≤ a ≤ b are ints, mid_fraction ∈ [0, 1] and
      d ≥ 1.
  """
  _check_step(start_step, "start_step")
  _check_step(end_step, "end_step")
  if end_step < start_step:
    raise ValueError(
      f"end_step ({end_step}) must be >= start_step ({start_step})."
    )
  if not 0.0 <= mid_fraction <= 1.0:
    raise ValueError(f"mid_fraction must be in [0, 1]; got {mid_fraction}.")
  if degree < 1:
    raise ValueError(f"degree must be >= 1; got {degree}.")
  if final_eps < 0:
    raise ValueError(f"final_eps must be >= 0; got {final_eps}.")

  ramp = end_step - start_step
  if not ramp:
    return lambda step: jnp.where(jnp.asarray(step) >= end_step, final_eps, 0.0)
  mid_step = start_step + int(math.floor(ramp * mid_fraction))
  poly_len, linear_len = mid_step - start_step, end_step - mid_step
  # ε_m = α P^d with α = F / (P^(d−1) (d L + P)), i.e. ε_m = F P / (d L + P).
  mid_eps = final_eps * poly_len / (degree * linear_len + poly_len)
  linear_slope = (final_eps - mid_eps) / linear_len if linear_len else 0.0

  def schedule(step: chex.Numeric) -> chex.Numeric:
    step = jnp.asarray(step, dtype=float)
    # Polynomial part as ε_m ((s − a)/P)^d: ratios in [0, 1], no overflow.
    progress = jnp.clip(step - start_step, 0, poly_len) / max(poly_len, 1)
    poly = mid_eps * progress**degree
    # Linear part; with L = 0 (mid_fraction 1) it is only reached at s = b.
    linear = jnp.minimum(mid_eps + linear_slope * (step - mid_step), final_eps)
    eps = jnp.where(step < mid_step, poly, linear)
    return jnp.where(step <= start_step, 0.0, eps)

  return schedule


def kappa_schedule(natural_steps: int) -> optax.Schedule:
  """Weight κ of the clean cross-entropy: 1 for the first steps, then 0.

  The total loss is (1 − κ)·L_rob + κ·CE(clean) (docs/method.md §3); the
  reference trains the first epoch naturally (``natural_steps = steps_per_epoch``).
  Raises ValueError unless ``natural_steps`` is a non-negative int.
  """
  _check_step(natural_steps, "natural_steps")

  def schedule(step: chex.Numeric) -> chex.Numeric:
    return jnp.where(jnp.asarray(step) < natural_steps, 1.0, 0.0)

  return schedule


def multistep_lr_schedule(
  base_lr: float, milestones_steps: Sequence[int], decay: float = 0.2
) -> optax.Schedule:
  """Learning rate times ``decay`` at each milestone, as PyTorch MultiStepLR.

  ``lr(step) = base_lr · decay^k`` with k the number of milestones ≤ step,
  e.g. milestones ``[120 · steps_per_epoch, 140 · steps_per_epoch]``.

  Raises:
    ValueError: on a non-positive ``base_lr``, ``decay`` outside (0, 1], or
      milestones that are not strictly increasing positive ints.
  """
  if base_lr <= 0:
    raise ValueError(f"base_lr must be > 0; got {base_lr}.")
  if not 0 < decay <= 1:
    raise ValueError(f"decay must be in (0, 1]; got {decay}.")
  milestones = list(milestones_steps)
  for milestone in milestones:
    _check_step(milestone, "each milestone")
  if any(b <= a for a, b in zip(milestones, milestones[1:])) or (
    milestones and milestones[0] == 0
  ):
    raise ValueError(
      "milestones_steps must be strictly increasing positive steps; got "
      f"{milestones}."
    )
  return optax.piecewise_constant_schedule(
    base_lr, {milestone: decay for milestone in milestones}
  )


def warmup_regularizer_scale(
  eps: chex.Numeric, eps_end: float, weight: float = 0.5
) -> chex.Numeric:
  """Weight of Shi et al.'s warm-up regularizers at the current ε.

  ``weight · (1 − ε/ε_end)``, clipped to [0, weight] (Shi et al., 2021;
  docs/method.md §3): the regularizers fade out linearly in ε and vanish once
  ε reaches ``eps_end`` (> 0, else ValueError). The caller applies them only during the
  ε ramp. The default ``weight`` is the reference's ``reg_lambda``.
  """
  if eps_end <= 0:
    raise ValueError(f"eps_end must be > 0; got {eps_end}.")
  return weight * jnp.clip(
    1.0 - jnp.asarray(eps, dtype=float) / eps_end, 0.0, 1.0
  )
