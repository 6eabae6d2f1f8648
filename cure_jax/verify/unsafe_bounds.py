"""Proves disjuncts of unsafe outputs infeasible by bounding them over a box.

A disjunct is a conjunction of rows ``r_k(y) = c_k·y + d_k ≥ 0``. It is
infeasible over the input box B — no x ∈ B has f(x) satisfying every row —
as soon as one row cannot be satisfied: ``max_{x∈B} r_k(f(x)) < 0`` for some
k. A sound upper bound ``ū_k ≥ max_{x∈B} c_k·f(x)`` therefore proves it when
``ū_k + d_k < 0``. The upper bounds come from a lower bound of the negated
specification, ``ū = −lower(−C f(x))``, with C folded into the last layer
(the ``spec=`` argument of the bound transforms).

The stages run in `STAGES` order (cheap and loose first), each on every row
of the region (one compiled program per stage and row count), until every
disjunct is proven or the time is up. A stage is any jittable
``upper_bounds(apply_fn, alpha_steps, params, lower, upper, coeffs) -> [S]``
registered in `STAGES`. Branch and bound runs after them (`bab_stage`).
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from cure_jax import bounds
from cure_jax.bounds.slope_optimization import DEFAULT_STEPS
from cure_jax.interchange.vnnlib import InputRegion, float32_box


def _flat_outputs(apply_fn):
  return lambda params, x: apply_fn(params, x).reshape(x.shape[0], -1)


def _transform_upper(transform: Callable) -> Callable:
  """A stage from a bound transform: −(lower bounds of −C f) over the box."""

  def upper_bounds(apply_fn, alpha_steps, params, lower, upper, coeffs):
    bounded = transform(_flat_outputs(apply_fn), alpha_steps)
    result = bounded(params, bounds.Box(lower, upper), spec=-coeffs[None])
    return -result.lower[0]

  return upper_bounds


STAGES: dict[str, Callable] = {
  "ibp": _transform_upper(lambda f, steps: bounds.ibp(f)),
  "crown_ibp": _transform_upper(
    lambda f, steps: bounds.crown_ibp(f, bound="lower")
  ),
  "crown": _transform_upper(lambda f, steps: bounds.crown(f, bound="lower")),
  "alpha_crown": _transform_upper(
    lambda f, steps: bounds.alpha_crown(f, steps=steps, bound="lower", unroll=1)
  ),
}
DEFAULT_STAGES = ("ibp", "crown_ibp", "crown", "alpha_crown")
_JITTED = {
  name: bounds.jit(fn, static_argnums=(0, 1)) for name, fn in STAGES.items()
}


class RegionProof(NamedTuple):
  """Which disjuncts of a region are proven infeasible, and by which stage.

  Attributes:
    proven: [D] bool.
    proved_by: [D] the stage's name ("" where not proven; "empty box" where
      the box itself is empty).
  """

  proven: np.ndarray
  proved_by: list[str]


def stacked_rows(region: InputRegion):
  """(coeffs [S, K] float32, offsets [S] float64, owner [S] disjunct index)."""
  coeffs = [d.coeffs for d in region.disjuncts]
  owner = np.concatenate(
    [np.full(len(c), i) for i, c in enumerate(coeffs)] + [np.zeros(0, int)]
  ).astype(int)
  offsets = np.concatenate([d.offsets for d in region.disjuncts])
  return np.concatenate(coeffs).astype(np.float32), offsets, owner


def prove_region(
  network,
  region: InputRegion,
  clock,
  stages: Sequence[str] = DEFAULT_STAGES,
  alpha_steps: int = DEFAULT_STEPS,
) -> RegionProof:
  """Runs the bound stages on one region (see the module docstring).

  Args:
    network: a `LoadedNetwork`.
    region: the box and its disjuncts.
    clock: the instance's `Clock`; stages stop once it has expired.
    stages: names in `STAGES`, in order.
    alpha_steps: α-CROWN's optimization steps.

  Returns:
    The `RegionProof`.
  """
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}.")
  count = len(region.disjuncts)
  proven, proved_by = np.zeros(count, bool), [""] * count
  if np.any(region.lower > region.upper):
    return RegionProof(np.ones(count, bool), ["empty box"] * count)
  coeffs, offsets, owner = stacked_rows(region)
  if not len(coeffs):
    return RegionProof(proven, proved_by)
  lower, upper = float32_box(region.lower, region.upper, outward=True)
  lower = lower.reshape(network.input_shape)
  upper = upper.reshape(network.input_shape)
  for stage in stages:
    if proven.all() or clock.expired():
      break
    upper_rows = network.run(
      f"bounds:{stage}",
      _JITTED[stage],
      (network.apply_fn, alpha_steps),
      (network.params, lower, upper, coeffs),
      clock,
    )
    infeasible_rows = np.asarray(upper_rows, np.float64) + offsets < 0
    for d in np.unique(owner[infeasible_rows]):
      if not proven[d]:
        proven[d], proved_by[d] = True, stage
  # Disjuncts without rows are never proven: any point of the box is unsafe.
  return RegionProof(proven, proved_by)
