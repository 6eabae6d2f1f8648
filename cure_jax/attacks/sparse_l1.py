"""A sparse-step l1 attack in the style of l1-APGD, and the strongest of two.

Croce & Hein, "Mind the box: l1-APGD for Sparse Adversarial Attacks on Image
Classifiers" (ICML 2021). In B1(x, ε) ∩ [0, 1]^d the worst case is sparse
(every vertex of the l1 ball moves one coordinate by ε, and the box caps each
coordinate's move), so dense l1 steps waste their budget. Per restart, from a
start x⁰ uniform in the threat model (or x itself):

  z       = Π(x^t + η · s^t),  s^t = sign(g)·1[top k by |g|] / k,
  x^{t+1} = Π(x^t + a·(z − x^t) + (1 − a)·(x^t − x^{t−1})),

with g the gradient of the attack loss at x^t, the top k taken among the
coordinates that can move in the direction of their gradient (not on the
box face it points out of), a = 1 at the first step and 0.75 after
(momentum), and Π the exact Euclidean projection onto B1(x, ε) ∩ box
(`project_l1_box`; as in l1-APGD: coordinate-wise a soft threshold θ
capped by the box). At the APGD checkpoints (`checkpoints`) two things adapt
per example:

* step size: halved, and the iterate reset to this restart's best point,
  when fewer than 75% of the steps since the last checkpoint raised the loss
  or the best loss did not improve although the step was not just halved
  (APGD's rule; Croce & Hein, ICML 2020);
* sparsity: k follows the best point's support, k = ⌈‖x_best − x‖₀ / 1.5⌉
  (at least ``min_coordinates``) — l1-APGD's rule, since the exact
  projection itself makes the iterates sparse. It starts at 2% of the
  coordinates (`INITIAL_FRACTION`).

Every iterate of every restart competes with the clean point for the output
(`projected_gradient.keep_better`), so the result never has a lower loss
than x. `strongest_l1` runs this attack and SLIDE-step PGD
(`projected_gradient.pgd`) and keeps the worse point per example.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cure_jax.attacks import (
  losses,
  norms,
  projected_gradient,
  projections,
)
from cure_jax.attacks.projected_gradient import (
  BestIterate,
  evaluate,
  evaluate_with_grad,
  keep_better,
)

MOMENTUM = 0.75  # a: weight of the new step against the last move.
SUCCESS_FRACTION = 0.75  # ρ: fraction of loss increases APGD asks for.
SPARSITY_SHRINK = 1.5  # k = support of the best point / 1.5.
# A coordinate counts as moved beyond float32 rounding of x + δ − x.
SUPPORT_TOLERANCE = 1e-6
# k⁰: the top 2% of coordinates. l1-APGD starts at 20% for 100+ steps; for
# the 8–20 steps of a training attack 2% found higher losses on MNIST.
INITIAL_FRACTION = 0.02
_TINY = 1e-30


def _threshold(magnitude, caps, radius):
  """θ ≥ 0 with m(θ) = Σ_i clip(|δ_i| − θ, 0, u_i) = radius (0 if m(0) ≤ it).

  m is piecewise linear and non-increasing: coordinate i is active (slope
  −1) for θ between |δ_i| − u_i and |δ_i|. One sort of all breakpoints,
  descending, with +1 where a coordinate becomes active and −1 where it
  saturates, gives the active count on each segment (a cumulative sum) and m
  at every breakpoint (another); θ is interpolated on the crossing segment.
  """
  points = jnp.concatenate(
    [magnitude, jnp.maximum(magnitude - caps, 0.0), jnp.zeros(1, caps.dtype)]
  )
  events = jnp.concatenate(
    [
      jnp.ones_like(magnitude),
      -jnp.ones_like(magnitude),
      jnp.zeros(1, magnitude.dtype),
    ]
  )
  negated, events = jax.lax.sort((-points, events), num_keys=1)
  points = -negated  # Descending, ending at θ = 0.
  active = jnp.cumsum(events)[:-1]  # On the segment below each point.
  mass = jnp.concatenate(
    [
      jnp.zeros(1, points.dtype),
      jnp.cumsum(active * (points[:-1] - points[1:])),
    ]
  )  # m at each point: non-decreasing along the list.
  first = jnp.clip(jnp.sum(mass < radius), 1, points.shape[0] - 1)
  upper, lower = points[first - 1], points[first]
  gain = jnp.maximum(mass[first] - mass[first - 1], _TINY)
  fraction = jnp.clip((radius - mass[first - 1]) / gain, 0.0, 1.0)
  theta = upper - fraction * (upper - lower)
  return jnp.where(mass[-1] <= radius, 0.0, theta)


def _project_vector(delta, x, radius, domain):
  """Π onto {δ' : ‖δ'‖₁ ≤ radius, x + δ' ∈ domain} of one flat [d] δ."""
  if domain is None:
    return projections.project_onto_l1_ball(delta, radius)
  lo, hi = domain
  caps = jnp.maximum(jnp.where(delta >= 0, hi - x, x - lo), 0.0)
  magnitude = jnp.abs(delta)
  theta = _threshold(magnitude, caps, radius)
  projected = jnp.sign(delta) * jnp.clip(magnitude - theta, 0.0, caps)
  # Float rounding of θ: scale onto the ball (towards 0, so inside the box).
  mass = jnp.sum(jnp.abs(projected))
  return projected * jnp.where(
    mass > radius, radius / jnp.maximum(mass, _TINY), 1.0
  )


def project_l1_box(
  x_adv: jax.Array, x: jax.Array, eps, domain: norms.Domain = (0.0, 1.0)
) -> jax.Array:
  """The Euclidean projection of ``x_adv`` onto B1(x, ε) ∩ domain, exactly.

  For δ = x_adv − x and caps u_i = hi − x_i (δ_i ≥ 0) or x_i − lo (δ_i < 0),
  the projection is x + sign(δ)·clip(|δ| − θ, 0, u) with θ = 0 if that point
  has ‖·‖₁ ≤ ε and otherwise the θ > 0 that puts it on the sphere (Croce &
  Hein, ICML 2021). The l1 mass is piecewise linear and
  non-increasing in θ with breakpoints |δ_i| and |δ_i| − u_i; it is
  evaluated at all of them after one sort and θ interpolated on the
  segment that crosses ε (O(d log d) per example). Unlike `projections.project_l1`
  (the l1 projection, then a clip) this is the nearest point of the
  intersection; both lie in it.

  Args:
    x_adv: [B, ...] points to project.
    x: [B, ...] clean points, inside ``domain``.
    eps: radius, scalar or [B], ≥ 0.
    domain: ``(lo, hi)`` box, or None (then this is the l1-ball projection).

  Returns:
    [B, ...] the projections.
  """
  domain = norms.check_domain(domain)
  radius = jnp.broadcast_to(
    norms.per_example(eps, x, "eps").reshape(-1), x.shape[:1]
  )
  flat_x = norms.flatten_examples(x)
  delta = norms.flatten_examples(x_adv) - flat_x
  projected = jax.vmap(_project_vector, in_axes=(0, 0, 0, None))(
    delta, flat_x, radius, domain
  )
  return norms.clip_to_domain(x + projected.reshape(x.shape), domain)


def top_k_direction(
  grad: jax.Array,
  x_adv: jax.Array,
  num_coordinates: jax.Array,
  domain: norms.Domain = (0.0, 1.0),
) -> jax.Array:
  """sign(g) on the top k movable coordinates by |g|, over k: ‖·‖₁ = 1.

  Like `steepest_ascent.l1_direction`, but with k per example and traced
  (it adapts during the attack): the k-th largest score comes from a sort.

  Args:
    grad: [B, ...] gradients.
    x_adv: [B, ...] current iterates (coordinates on a box face with the
      gradient pointing out of the box cannot move and are skipped).
    num_coordinates: [B] ints k ≥ 1.
    domain: optional ``(lo, hi)`` box.

  Returns:
    [B, ...] directions of l1 norm 1 (0 where no coordinate can move).
  """
  movable = jnp.ones(grad.shape, bool)
  if domain is not None:
    lo, hi = domain
    movable = ~(((x_adv <= lo) & (grad < 0)) | ((x_adv >= hi) & (grad > 0)))
  score = norms.flatten_examples(jnp.where(movable, jnp.abs(grad), 0.0))
  descending = -jnp.sort(-score, axis=1)
  k = jnp.clip(num_coordinates, 1, score.shape[1]).astype(jnp.int32)
  kth_largest = jnp.take_along_axis(descending, k[:, None] - 1, axis=1)
  chosen = (score >= kth_largest) & (score > 0)  # Ties may add coordinates.
  count = jnp.maximum(jnp.sum(chosen, axis=1, keepdims=True), 1)
  direction = jnp.where(chosen, jnp.sign(norms.flatten_examples(grad)), 0.0)
  return (direction / count).reshape(grad.shape)


def checkpoints(steps: int) -> tuple[int, ...]:
  """APGD's checkpoints: after steps w₁ < w₂ < … ≤ n, at shrinking intervals.

  The first interval is max(⌊0.22n⌋, 1) steps; each next one is shorter by
  max(⌊0.03n⌋, 1), down to max(⌊0.06n⌋, 1) (Croce & Hein, ICML 2020, as in
  their code).

  Args:
    steps: n, the number of steps.

  Returns:
    The step counts after which the step size and sparsity adapt.
  """
  interval = max(int(0.22 * steps), 1)
  shortest, decrease = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
  points, at = [], interval
  while at <= steps:
    points.append(at)
    interval = max(interval - decrease, shortest)
    at += interval
  return tuple(points)


class _Run(NamedTuple):
  """The state of one restart, per example."""

  x: jax.Array  # x^t
  previous: jax.Array  # x^{t−1}
  grad: jax.Array  # ∇ at x^t
  loss: jax.Array  # loss at x^t
  step: jax.Array  # η [B]
  num_coordinates: jax.Array  # k [B]
  best: BestIterate  # this restart's best point
  best_grad: jax.Array
  raised: jax.Array  # steps since the checkpoint that raised the loss [B]
  best_at_check: jax.Array  # best loss at the last checkpoint [B]
  halved_at_check: jax.Array  # whether the last checkpoint halved η [B]


def _where(mask, a, b):
  return jnp.where(norms.expand_per_example(mask, a), a, b)


def _check_arguments(x, y, steps, restarts, random_start, key):
  if jnp.ndim(x) < 1 or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(
      f"x must be a floating-point batch [B, ...]; got shape {jnp.shape(x)} "
      f"and dtype {jnp.result_type(x)}."
    )
  projected_gradient.check_labels(x, y)
  norms.check_count("steps", steps, minimum=1)
  projected_gradient.check_restarts(restarts, random_start, key)


def sparse_l1_attack(
  logits_fn: projected_gradient.LogitsFn,
  x: jax.Array,
  y: jax.Array,
  *,
  eps,
  steps: int = 20,
  key: jax.Array | None = None,
  restarts: int = 1,
  random_start: bool = True,
  loss: str = "ce",
  domain: norms.Domain = (0.0, 1.0),
  relative_step_size: float = 1.0,
  min_coordinates: int = 1,
  unroll: bool | None = None,
) -> jax.Array:
  """The sparse l1 attack of the module docstring; the best point per example.

  Args:
    logits_fn: ``x -> logits``, [B, ...] -> [B, K], per example.
    x: [B, ...] clean inputs, inside ``domain``.
    y: [B] integer labels.
    eps: l1 radius ε, scalar or [B], ≥ 0.
    steps: gradient steps per restart (≥ 1).
    key: PRNG key of the random starts (needed when ``random_start``).
    restarts: independent starts (≥ 1); the best over all is kept.
    random_start: start uniformly in B1(x, ε) ∩ domain (else at x).
    loss: attack objective, ``'ce'`` or ``'margin'``.
    domain: ``(lo, hi)`` box, or None.
    relative_step_size: the initial step η⁰ = relative_step_size·ε (l1
      length; 1 in l1-APGD).
    min_coordinates: the fewest coordinates a step moves.
    unroll: unroll steps and restarts into straight-line code (see
      `projected_gradient.pgd`); default when steps × restarts ≤ 16.

  Returns:
    [B, ...] the highest-loss point per example (the clean point included;
    for the margin loss a misclassified point first), no gradient.

  Raises:
    ValueError: for malformed arguments.
  """
  loss_fn = losses.get_attack_loss(loss)
  domain = norms.check_domain(domain)
  _check_arguments(x, y, steps, restarts, random_start, key)
  norms.check_count("min_coordinates", min_coordinates, minimum=1)
  if not relative_step_size > 0:
    raise ValueError(
      f"relative_step_size must be > 0, got {relative_step_size}."
    )
  x = jax.lax.stop_gradient(jnp.asarray(x))
  radius = norms.per_example(eps, x, "eps")
  eps_b = jnp.broadcast_to(radius.reshape(-1), x.shape[:1])
  num_features = norms.flatten_examples(x).shape[1]
  margin_first = loss == "margin"
  project = lambda z: project_l1_box(z, x, eps_b, domain)

  def gradient_step(run: _Run, schedule) -> tuple[_Run, None]:
    a, is_checkpoint, interval = schedule
    direction = top_k_direction(run.grad, run.x, run.num_coordinates, domain)
    z = project(run.x + norms.expand_per_example(run.step, x) * direction)
    x_next = project(run.x + a * (z - run.x) + (1 - a) * (run.x - run.previous))
    current, grad = evaluate_with_grad(logits_fn, loss_fn, x_next, y)
    best = keep_better(run.best, current, margin_first)
    replaced = (best.loss != run.best.loss) | (
      best.misclassified != run.best.misclassified
    )
    run = run._replace(
      x=x_next,
      previous=run.x,
      grad=grad,
      loss=current.loss,
      best=best,
      best_grad=_where(replaced, grad, run.best_grad),
      raised=run.raised + (current.loss > run.loss),
    )
    adapted = _adapt(run, interval, x, min_coordinates, num_features)
    return jax.tree.map(
      lambda new, old: jnp.where(is_checkpoint, new, old), adapted, run
    ), None

  def one_restart(overall: BestIterate, restart) -> tuple[BestIterate, None]:
    start = projected_gradient.start_point(
      key, restart, x, eps_b, "l1", domain, random_start
    )
    first, grad = evaluate_with_grad(logits_fn, loss_fn, start, y)
    initial_k = max(min_coordinates, math.ceil(INITIAL_FRACTION * num_features))
    run = _Run(
      x=start,
      previous=start,
      grad=grad,
      loss=first.loss,
      step=relative_step_size * eps_b,
      num_coordinates=jnp.full(x.shape[:1], initial_k, jnp.int32),
      best=first,
      best_grad=grad,
      raised=jnp.zeros(x.shape[:1], jnp.int32),
      best_at_check=first.loss,
      halved_at_check=jnp.ones(x.shape[:1], bool),
    )
    run, _ = jax.lax.scan(
      gradient_step,
      run,
      _schedule(steps, x.dtype),
      unroll=True if unroll else 1,
    )
    return keep_better(overall, run.best, margin_first), None

  unroll = projected_gradient.resolve_unroll(unroll, steps, restarts)
  best, _ = evaluate_with_grad(logits_fn, loss_fn, x, y)
  return projected_gradient.best_over_restarts(
    one_restart, best, restarts, unroll
  )


def _adapt(run: _Run, interval, x, min_coordinates, num_features) -> _Run:
  """A checkpoint: halve η where stalled (restarting at the best), adapt k."""
  stalled = (run.raised < SUCCESS_FRACTION * interval) | (
    ~run.halved_at_check & (run.best.loss <= run.best_at_check)
  )
  moved = jnp.abs(norms.flatten_examples(run.best.x - x)) > SUPPORT_TOLERANCE
  support = jnp.sum(moved, axis=1)
  sparsity = jnp.ceil(support / SPARSITY_SHRINK)
  return run._replace(
    x=_where(stalled, run.best.x, run.x),
    previous=_where(stalled, run.best.x, run.previous),
    grad=_where(stalled, run.best_grad, run.grad),
    loss=jnp.where(stalled, run.best.loss, run.loss),
    step=jnp.where(stalled, run.step / 2, run.step),
    num_coordinates=jnp.clip(sparsity, min_coordinates, num_features).astype(
      jnp.int32
    ),
    raised=jnp.zeros_like(run.raised),
    best_at_check=run.best.loss,
    halved_at_check=stalled,
  )


def _schedule(steps: int, dtype):
  """Per step: momentum a, whether a checkpoint follows, its interval."""
  marks = checkpoints(steps)
  intervals = dict(zip(marks, _differences(list(marks))))
  momentum = [1.0] + [MOMENTUM] * (steps - 1)
  is_checkpoint = [t + 1 in intervals for t in range(steps)]
  interval = [intervals.get(t + 1, 1) for t in range(steps)]
  return (
    jnp.asarray(momentum, dtype),
    jnp.asarray(is_checkpoint),
    jnp.asarray(interval, dtype),
  )


def _differences(points: list[int]) -> list[int]:
  """Interval lengths w_j − w_{j−1} (w₀ = 0)."""
  return [b - a for a, b in zip([0] + points[:-1], points)]


def strongest_l1(
  logits_fn: projected_gradient.LogitsFn,
  x: jax.Array,
  y: jax.Array,
  *,
  eps,
  key: jax.Array,
  steps: int = 20,
  restarts: int = 1,
  loss: str = "ce",
  domain: norms.Domain = (0.0, 1.0),
  dense_relative_step_size: float = 2.5,
  l1_sparsity: float = 0.99,
) -> jax.Array:
  """Per example, the worse of SLIDE-step PGD and `sparse_l1_attack`.

  Both run with the same budget (steps, restarts, random starts) and loss;
  the point of higher loss wins (for the margin loss a misclassified point
  first; a tie keeps PGD's). PGD's step is the l1 length
  dense_relative_step_size·ε/steps (Madry et al.'s rule, as in
  `cure_jax.certify.empirical`); the sparse attack uses its own defaults.

  Args:
    logits_fn: ``x -> logits``, [B, ...] -> [B, K], per example.
    x: [B, ...] clean inputs, inside ``domain``.
    y: [B] integer labels.
    eps: l1 radius ε, scalar or [B].
    key: PRNG key; each attack gets its own part.
    steps: gradient steps per restart of each attack.
    restarts: random starts of each attack.
    loss: ``'ce'`` or ``'margin'``.
    domain: ``(lo, hi)`` box, or None.
    dense_relative_step_size: PGD's step as a multiple of ε/steps.
    l1_sparsity: fraction of coordinates a PGD step leaves untouched.

  Returns:
    [B, ...] the worse point per example, no gradient.
  """
  dense_key, sparse_key = jax.random.split(key)
  common = dict(
    eps=eps, steps=steps, restarts=restarts, loss=loss, domain=domain
  )
  dense = projected_gradient.pgd(
    logits_fn,
    x,
    y,
    norm="l1",
    step_size=dense_relative_step_size * jnp.asarray(eps) / steps,
    key=dense_key,
    l1_sparsity=l1_sparsity,
    **common,
  )
  sparse = sparse_l1_attack(logits_fn, x, y, key=sparse_key, **common)
  loss_fn = losses.get_attack_loss(loss)
  best = keep_better(
    evaluate(logits_fn, loss_fn, dense, y),
    evaluate(logits_fn, loss_fn, sparse, y),
    loss == "margin",
  )
  return jax.lax.stop_gradient(best.x)
