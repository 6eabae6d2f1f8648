"""Looks for a counterexample: an input of the box whose outputs satisfy
every row of some unsafe disjunct.

With rows ``r_{d,k}(y) = c_{d,k}·y + d_{d,k}`` of disjuncts d, the search
maximizes

  g(x) = max_d min_k r_{d,k}(f(x))

(≥ 0 iff f(x) satisfies some disjunct; for the margin property it is the
usual margin loss max_{j≠y} z_j − z_y) over the box B by projected
sign-gradient ascent (PGD: ``x ← clip_B(x + α_t · sign ∇g · (u − l))``, α_t
decaying geometrically), from the box's centre, its two extreme corners and
random points, keeping the best point of each start. A point with
``g(x) ≥ 0`` is a candidate; it counts as a counterexample only after a plain
forward pass of the JAX function and, where onnxruntime is installed,
onnxruntime satisfy every row of one disjunct (strict rows strictly). Points
are taken in the box rounded inward to float32, so they lie in the box the
property declares.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.interchange.vnnlib import InputRegion, OutputSpec, float32_box


class AttackSettings(NamedTuple):
  """The search's budget.

  Attributes:
    steps: ascent steps.
    starts: starting points (centre, two corners, then random ones).
    first_step: the first step as a fraction of the box's width.
    last_step: the last step as a fraction of the box's width.
    seed: seed of the random starts.
  """

  steps: int = 50
  starts: int = 8
  first_step: float = 0.25
  last_step: float = 0.005
  seed: int = 0


class Counterexample(NamedTuple):
  """A confirmed unsafe input and its outputs (onnxruntime's where present)."""

  inputs: np.ndarray
  outputs: np.ndarray
  disjunct: int


def _padded_rows(region: InputRegion):
  """Rows of every disjunct padded (by repeating its first) to one count."""
  width = max(len(d.offsets) for d in region.disjuncts)
  coeffs, offsets = [], []
  for d in region.disjuncts:
    repeat = np.r_[
      np.arange(len(d.offsets)), np.zeros(width - len(d.offsets), int)
    ]
    coeffs.append(d.coeffs[repeat])
    offsets.append(d.offsets[repeat])
  return np.float32(coeffs), np.float32(offsets)


def _starts(lower, upper, count: int, key):
  """[count, ...] centre, lower corner, upper corner, then uniform points."""
  fixed = jnp.stack([(lower + upper) / 2, lower, upper])
  random = jax.random.uniform(key, (max(count - 3, 0),) + lower.shape)
  return jnp.concatenate([fixed, lower + random * (upper - lower)])[:count]


def _search(apply_fn, settings, params, lower, upper, coeffs, offsets):
  """Best point of each start [N, ...] and its g (see the module doc)."""
  width = upper - lower

  def objective(x):
    y = apply_fn(params, x[None]).reshape(-1)
    return jnp.max(jnp.min(coeffs @ y + offsets, axis=-1))

  values, grads = jax.vmap(objective), jax.vmap(jax.grad(objective))
  x = _starts(lower, upper, settings.starts, jax.random.key(settings.seed))
  ratio = (settings.last_step / settings.first_step) ** (
    1.0 / max(settings.steps - 1, 1)
  )

  def step(carry, t):
    x, best_x, best = carry
    size = settings.first_step * ratio**t
    x = jnp.clip(x + size * width * jnp.sign(grads(x)), lower, upper)
    value = values(x)
    better = value > best
    best_x = jnp.where(
      better.reshape(better.shape + (1,) * lower.ndim), x, best_x
    )
    return (x, best_x, jnp.maximum(value, best)), None

  (_, best_x, best), _ = jax.lax.scan(
    step, (x, x, values(x)), jnp.arange(settings.steps)
  )
  return best_x, best


_search_jit = jax.jit(_search, static_argnums=(0, 1))


def satisfies(spec: OutputSpec, outputs: np.ndarray) -> bool:
  """Whether outputs y satisfy every row: c·y + d ≥ 0 (> 0 where strict)."""
  values = spec.coeffs @ outputs + spec.offsets
  return bool(np.all(np.where(spec.strict, values > 0, values >= 0)))


def confirm(network, spec: OutputSpec, x: np.ndarray) -> np.ndarray | None:
  """The outputs at x if the plain JAX pass and onnxruntime both satisfy
  ``spec``; None otherwise. onnxruntime's outputs are returned where present."""
  outputs = network.outputs(x)
  if not satisfies(spec, outputs):
    return None
  reference = network.reference_outputs(x)
  if reference is None:
    return outputs
  return reference if satisfies(spec, reference) else None


def find_counterexample(
  network,
  region: InputRegion,
  clock,
  settings: AttackSettings = AttackSettings(),
) -> Counterexample | None:
  """A confirmed counterexample in the region, or None (see module doc).

  Raises:
    ValueError: ``settings`` asks for no starting point or negative steps.
  """
  if settings.starts < 1 or settings.steps < 0:
    raise ValueError(
      f"the search needs starts >= 1 and steps >= 0; got {settings}."
    )
  if np.any(region.lower > region.upper) or not region.disjuncts:
    return None
  lower, upper = float32_box(region.lower, region.upper, outward=False)
  for index, spec in enumerate(region.disjuncts):
    if not len(spec.offsets):  # no output constraint: any point is unsafe
      outputs = confirm(network, spec, (lower + upper) / 2)
      if outputs is not None:
        return Counterexample((lower + upper) / 2, outputs, index)
  coeffs, offsets = _padded_rows(region)
  shape = network.input_shape[1:]
  best_x, best = network.run(
    "falsify",
    _search_jit,
    (network.apply_fn, settings),
    (
      network.params,
      lower.reshape(shape),
      upper.reshape(shape),
      coeffs,
      offsets,
    ),
    clock,
  )
  best_x, best = np.asarray(best_x), np.asarray(best)
  for start in np.argsort(-best):
    if best[start] < 0:
      break
    x = best_x[start].reshape(-1)
    for index, spec in enumerate(region.disjuncts):
      outputs = confirm(network, spec, x)
      if outputs is not None:
        return Counterexample(x, outputs, index)
  return None
