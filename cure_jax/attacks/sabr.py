"""SABR's attack: the PGD that centres SABR's small box (docs/method.md §2).

Müller, Eckert, Fischer & Vechev, "Certified Training: Small Boxes are All
You Need" (ICLR 2023), as run by the CURE reference code: cross-entropy PGD,
8 steps by default, uniform random start, step α_t = 0.5·ε·sign(g) (l∞) or
0.2·ε·g/||g||_2 (the l2 variant of CURE), with α multiplied by 0.1 at each of
the steps ⌈0.5n⌉, ⌈0.8n⌉ and ⌈0.9n⌉, and the best iterate kept per sample.
For n = 8 the milestones are 4, 7 and 8, so steps 0–3 use 0.5ε, steps 4–6
0.05ε and step 7 0.005ε.

Deliberate differences from the reference code: the clean point competes with
the iterates (so the box centre never has a lower loss than x), the l∞ start
is exactly uniform in B∞(x, ε) ∩ [0, 1], the radius is per example rather
than the batch maximum, and the l2 projection is the correct one
(docs/method.md §2, **Decision**).
"""

import fractions
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from cure_jax.attacks import norms, projected_gradient

# Initial step as a fraction of ε, per threat model (docs/method.md §2).
SABR_STEP_FRACTION = {"linf": 0.5, "l2": 0.2}
# The step is multiplied by SABR_DECAY_FACTOR at ⌈f·n⌉ for each f here.
SABR_DECAY_POINTS = (
  fractions.Fraction(1, 2),
  fractions.Fraction(4, 5),
  fractions.Fraction(9, 10),
)
SABR_DECAY_FACTOR = 0.1


def sabr_milestones(steps: int) -> tuple[int, ...]:
  """The steps ⌈0.5n⌉, ⌈0.8n⌉, ⌈0.9n⌉ at which SABR decays its step size.

  Computed in exact rational arithmetic: in floating point 0.9·110 is
  99.00000000000001, whose ceiling would be off by one. Milestones may
  repeat for tiny n.
  """
  return tuple(math.ceil(f * steps) for f in SABR_DECAY_POINTS)


def sabr_step_decay(steps: int) -> Callable[[int], float]:
  """SABR's step multiplier t -> 0.1^{#{m : t >= m}} over the milestones, the
  ``step_decay`` of `projected_gradient.pgd`."""
  milestones = sabr_milestones(steps)

  def decay(t: int) -> float:
    return SABR_DECAY_FACTOR ** sum(t >= m for m in milestones)

  return decay


def _check_sabr_norm(norm: str) -> str:
  if norm not in SABR_STEP_FRACTION:
    raise ValueError(
      f"SABR's attack is defined for norm in "
      f"{tuple(SABR_STEP_FRACTION)}, got {norm!r}."
    )
  return norm


def sabr_step_sizes(eps, steps: int, norm: str = "linf") -> jax.Array:
  """The step size SABR's attack uses at each step t = 0, …, steps − 1.

  α_t = fraction·ε·0.1^{#{m : t >= m}}, fraction 0.5 for l∞ and 0.2 for l2.
  Returns [steps], or [steps, B] for per-example ``eps``.
  """
  norms.check_count("steps", steps, minimum=0)
  norms.check_nonnegative("eps", eps)
  eps = jnp.asarray(eps)
  eps = eps.astype(jnp.promote_types(eps.dtype, jnp.float32))
  decay = sabr_step_decay(steps)
  multipliers = jnp.asarray([decay(t) for t in range(steps)], eps.dtype)
  fraction = SABR_STEP_FRACTION[_check_sabr_norm(norm)]
  return multipliers.reshape((steps,) + (1,) * eps.ndim) * (fraction * eps)


def sabr_attack(
  logits_fn: projected_gradient.LogitsFn,
  x: jax.Array,
  y: jax.Array,
  *,
  eps,
  key: jax.Array,
  steps: int = 8,
  norm: str = "linf",
  restarts: int = 1,
  domain: norms.Domain = (0.0, 1.0),
) -> jax.Array:
  """SABR's PGD: the adversarial point around which SABR puts its small box.

  ``norm`` is 'linf' (SABR) or 'l2' (CURE's l2 variant); other arguments as
  `projected_gradient.pgd`. Returns the highest-cross-entropy point per
  example (the clean point included), carrying no gradient.
  """
  fraction = SABR_STEP_FRACTION[_check_sabr_norm(norm)]
  norms.check_nonnegative("eps", eps)
  return projected_gradient.pgd(
    logits_fn,
    x,
    y,
    norm=norm,
    eps=eps,
    steps=steps,
    step_size=fraction * jnp.asarray(eps),
    key=key,
    restarts=restarts,
    random_start=True,
    loss="ce",
    domain=domain,
    step_decay=sabr_step_decay(steps),
  )
