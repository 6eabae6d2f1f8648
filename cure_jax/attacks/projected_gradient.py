"""Projected gradient ascent (PGD) in an l∞, l2 or l1 ball, best iterate kept.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks" (ICLR 2018). Per restart r, from a start x⁰ (uniform in the threat
model, or x itself):

  x^{t+1} = Π(x^t + α_t · d_p(∇_x L(f(x^t), y))),   t = 0, …, steps − 1,

with d_p the steepest ascent direction of unit l_p norm (`steepest_ascent`),
Π the projection onto B_p(x, ε) ∩ domain (`projections`) and
α_t = step_size · step_decay(t). Every iterate x⁰, …, x^{steps} of every
restart competes with the clean point x for the output, per example: the
highest loss wins (for the margin loss, any misclassified point beats any
correctly classified one; ties keep the earlier point). The returned point
therefore never has a lower loss than x itself.

The model enters as a closure ``logits_fn(x) -> logits`` that must act on
each example independently (e.g. BatchNorm in inference mode), since the
per-example gradients are taken as the gradient of the summed loss. The
result carries no gradient (training stops it at the attack point anyway).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cure_jax.attacks import (
  ball_sampling,
  losses,
  norms,
  projections,
  steepest_ascent,
)

LogitsFn = Callable[[jax.Array], jax.Array]
MAX_UNROLLED_STEPS = 16
StepDecay = Callable[[int], float]


class BestIterate(NamedTuple):
  """The best point found so far per example: x [B, ...], its attack loss
  [B] and whether argmax f(x) ≠ y there [B]."""

  x: jax.Array
  loss: jax.Array
  misclassified: jax.Array


def keep_better(
  best: BestIterate, candidate: BestIterate, misclassified_first: bool
) -> BestIterate:
  """Per example, the better of two points; a tie keeps ``best``.

  Ranks by loss, or by (misclassified, loss) lexicographically when
  ``misclassified_first`` (the margin loss).
  """
  better = candidate.loss > best.loss
  if misclassified_first:
    better = (candidate.misclassified & ~best.misclassified) | (
      (candidate.misclassified == best.misclassified) & better
    )

  def pick(new, old):
    return jnp.where(norms.expand_per_example(better, old), new, old)

  return jax.tree.map(pick, candidate, best)


def evaluate(
  logits_fn: LogitsFn, loss_fn: losses.AttackLoss, x: jax.Array, y: jax.Array
) -> BestIterate:
  """The point ``x`` with its loss and correctness (forward pass only)."""
  logits = logits_fn(x)
  return BestIterate(x, loss_fn(logits, y), losses.misclassified(logits, y))


def evaluate_with_grad(
  logits_fn: LogitsFn, loss_fn: losses.AttackLoss, x: jax.Array, y: jax.Array
):
  """`evaluate` plus ∇_x of the summed loss (= per-example gradients)."""

  def total_loss(x):
    logits = logits_fn(x)
    per_example = loss_fn(logits, y)
    return jnp.sum(per_example), (per_example, logits)

  (_, (loss, logits)), grad = jax.value_and_grad(total_loss, has_aux=True)(x)
  return BestIterate(x, loss, losses.misclassified(logits, y)), grad


def check_labels(x, y):
  """Raises a ValueError unless ``y`` holds one integer label per example of ``x``."""
  if jnp.shape(y) != jnp.shape(x)[:1] or not jnp.issubdtype(
    jnp.result_type(y), jnp.integer
  ):
    raise ValueError(
      f"y must hold one integer label per example, shape {jnp.shape(x)[:1]};"
      f" got shape {jnp.shape(y)} and dtype {jnp.result_type(y)}."
    )


def check_restarts(restarts, random_start, key):
  """Raises a ValueError for a restart count that cannot vary or has no key."""
  norms.check_count("restarts", restarts, minimum=1)
  if random_start and key is None:
    raise ValueError("random_start=True needs a PRNG key: pass key=...")
  if restarts > 1 and not random_start:
    raise ValueError(
      "restarts > 1 repeats the same deterministic attack; "
      "set random_start=True or restarts=1."
    )


def _check_arguments(x, y, steps, restarts, random_start, key, l1_sparsity):
  """Raises a ValueError that says what to fix for malformed arguments."""
  if jnp.ndim(x) < 1:
    raise ValueError("x must have a leading batch axis, got a scalar.")
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(
      f"x must be floating point (e.g. images scaled to "
      f"[0, 1]), got dtype {jnp.result_type(x)}."
    )
  check_labels(x, y)
  norms.check_count("steps", steps, minimum=0)
  check_restarts(restarts, random_start, key)
  if not 0.0 <= l1_sparsity < 1.0:
    raise ValueError(f"l1_sparsity must lie in [0, 1), got {l1_sparsity}.")


def _step_size_schedule(
  step_size, step_decay: StepDecay | None, steps: int, x: jax.Array
) -> jax.Array:
  """α_t = step_size · step_decay(t) as [steps, B or 1, 1, ..., 1]."""
  step_size = norms.per_example(step_size, x, "step_size")
  decay = [1.0 if step_decay is None else step_decay(t) for t in range(steps)]
  norms.check_nonnegative("step_decay", decay)
  decay = jnp.asarray(decay, dtype=x.dtype).reshape((steps,) + (1,) * x.ndim)
  return decay * step_size


def start_point(key, restart, x, eps, norm, domain, random_start) -> jax.Array:
  """Restart ``restart``'s first point: uniform in B_p(x, ε) ∩ domain, or x."""
  if not random_start:
    return x
  return ball_sampling.random_start(
    jax.random.fold_in(key, restart), x, eps, norm=norm, domain=domain
  )


def resolve_unroll(unroll: bool | None, steps: int, restarts: int):
  """``unroll``, or by default whether steps × restarts ≤ `MAX_UNROLLED_STEPS`."""
  return steps * restarts <= MAX_UNROLLED_STEPS if unroll is None else unroll


def best_over_restarts(one_restart, best: BestIterate, restarts: int, unroll):
  """Folds ``one_restart(best, r) -> (best, None)`` over r = 0, …, restarts − 1.

  A Python loop when ``unroll``, else a `jax.lax.scan`; returns the best
  point [B, ...], a constant for autodiff.
  """
  if unroll:
    for restart in range(restarts):
      best, _ = one_restart(best, restart)
  else:
    best, _ = jax.lax.scan(one_restart, best, jnp.arange(restarts))
  return jax.lax.stop_gradient(best.x)


def pgd(
  logits_fn: LogitsFn,
  x: jax.Array,
  y: jax.Array,
  *,
  norm: str,
  eps,
  steps: int,
  step_size,
  key: jax.Array | None = None,
  restarts: int = 1,
  random_start: bool = True,
  loss: str = "ce",
  domain: norms.Domain = (0.0, 1.0),
  step_decay: StepDecay | None = None,
  l1_sparsity: float = 0.99,
  unroll: bool | None = None,
) -> jax.Array:
  """Runs PGD and returns the best point found per example.

  Args:
    logits_fn: ``x -> logits``, [B, ...] -> [B, K], per example.
    x: [B, ...] clean inputs, inside ``domain``.
    eps: ball radius, scalar or [B], >= 0.
    step_size: α, the ``norm``-length of a step, scalar or [B], >= 0 (l∞:
      α·sign(g); l2: α·g/||g||_2; l1: a SLIDE step of l1 length α).
    steps: gradient steps per restart (>= 0).
    key: PRNG key, needed when ``random_start`` is True.
    restarts: starts (>= 1; > 1 needs ``random_start``); the best is kept.
    loss: ``'ce'`` or ``'margin'`` (see `losses`).
    step_decay: optional ``t -> multiplier`` of the step size, called with
      Python ints t = 0, …, steps − 1 (e.g. `sabr.sabr_step_decay`).
    l1_sparsity: see `steepest_ascent.l1_direction`.
    unroll: unroll steps and restarts into straight-line code (XLA:CPU runs
      a convolution inside a loop much slower, docs/performance.md), at a
      compile cost growing with steps × restarts. Default: unrolled when
      steps × restarts <= `MAX_UNROLLED_STEPS` (the training attacks).

  Returns:
    [B, ...] the best iterate per example, a constant for autodiff.

  Raises:
    ValueError: for unknown ``norm``/``loss``, negative (concrete) ``eps`` or
      ``step_size``, mismatched shapes, or inconsistent options.
  """
  norms.check_norm(norm)
  loss_fn = losses.get_attack_loss(loss)
  domain = norms.check_domain(domain)
  _check_arguments(x, y, steps, restarts, random_start, key, l1_sparsity)
  x = jax.lax.stop_gradient(jnp.asarray(x))
  norms.per_example(eps, x, "eps")  # Validates eps before tracing the loop.
  step_sizes = _step_size_schedule(step_size, step_decay, steps, x)

  def gradient_step(carry, alpha):
    x_t, best = carry
    current, grad = evaluate_with_grad(logits_fn, loss_fn, x_t, y)
    best = keep_better(best, current, loss == "margin")
    direction = steepest_ascent.ascent_direction(
      grad, x_t, norm=norm, domain=domain, l1_sparsity=l1_sparsity
    )
    x_next = projections.project(
      x_t + alpha * direction, x, eps, norm=norm, domain=domain
    )
    return (x_next, best), None

  def one_restart(best, restart):
    x_0 = start_point(key, restart, x, eps, norm, domain, random_start)
    (x_last, best), _ = jax.lax.scan(
      gradient_step, (x_0, best), step_sizes, unroll=True if unroll else 1
    )
    final = evaluate(logits_fn, loss_fn, x_last, y)
    return keep_better(best, final, loss == "margin"), None

  unroll = resolve_unroll(unroll, steps, restarts)
  best = evaluate(logits_fn, loss_fn, x, y)
  return best_over_restarts(one_restart, best, restarts, unroll)
