"""What every training objective shares: its signature and building blocks.

An objective is a pure function

    objective(params, batch_stats, batch, context) -> (loss, (batch_stats, metrics))

of the parameters, the BatchNorm running statistics, a `Batch` and the
`StepContext` (the step's PRNG key and scheduled values). By default it runs the
clean forward pass in train mode — which updates the running statistics and
yields the clean batch's moments — and bounds the network with those moments
(docs/method.md §2), so each BatchNorm is a fixed affine map in the bounded pass; with
``config.bn_moments = 'midpoint'`` it skips the clean pass and bounds the
network in train mode instead (`Network.midpoint_moments`). Objectives are
built by `cure_jax.objectives.objective.make_objective(config, model)`; each method
lives in its own module.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cure_jax.bounds import Interval, LinfBall, ibp, margin_spec, pad_margins
from cure_jax.models.batch_norm import RUNNING_STATS
from cure_jax.types import PIXEL_DOMAIN as DOMAIN
from cure_jax.types import Batch, Params

Metrics = dict[str, jax.Array]


class StepContext(NamedTuple):
  """Per-step values an objective may use (all traced scalars but ``rng``).

  Attributes:
    rng: this step's PRNG key (derived from the seed and the step).
    eps_linf: the ramped l∞ training radius.
    eps_l2: the ramped l2 training radius.
    eps_l1: the ramped l1 training radius (three-norm CURE, method l1).
    kappa: weight of the clean cross-entropy (1 during natural epochs).
    reg_scale: weight of the warm-up regularizers, 0.5·(1 − ε/ε_end) during
      the ramp and 0 afterwards (Shi et al., 2021).
  """

  rng: jax.Array
  eps_linf: jax.Array
  eps_l2: jax.Array
  kappa: jax.Array
  reg_scale: jax.Array
  eps_l1: jax.Array = 0.0


Objective = Callable[
  [Params, Any, Batch, StepContext], tuple[jax.Array, tuple[Any, Metrics]]
]


class Network(NamedTuple):
  """A model frozen at given parameters and BatchNorm statistics.

  Attributes:
    apply: the Flax ``model.apply``.
    variables: ``{'params': ..., 'batch_stats': ...}``; during training with
      clean moments (the reference) the statistics are the clean batch's
      moments, with midpoint moments the running statistics.
    num_classes: K.
    midpoint_moments: bound the model in train mode, so that each BatchNorm
      normalizes with the moments of the midpoints of its bounded input
      (`cure_jax.bounds.midpoint`; auto_LiRPA's IBP without a clean pass);
      ``logits`` (the attacks) then use the running statistics.
  """

  apply: Callable
  variables: dict[str, Any]
  num_classes: int
  midpoint_moments: bool = False

  def logits(self, x: jax.Array) -> jax.Array:
    return self.apply(self.variables, x, train=False)

  def margin_bounds(self, input_set, labels, transform=ibp) -> Interval:
    """[B, K-1] bounds of the margins z_y − z_j over ``input_set``."""
    return self.margin_bounds_and_stats(input_set, labels, transform)[0]

  def margin_bounds_and_stats(self, input_set, labels, transform=ibp):
    """(margin bounds, running statistics updated by this pass, or None).

    With ``midpoint_moments`` the pass is a train-mode one: its BatchNorms
    normalize with, and update the running statistics by, the moments of
    their bounded inputs' midpoints; ``transform`` must then be `ibp`.
    """
    spec = margin_spec(labels, self.num_classes)
    if not self.midpoint_moments:
      return transform(self.apply)(
        self.variables, input_set, train=False, spec=spec
      ), None
    if transform is not ibp:
      raise ValueError(
        "midpoint BatchNorm moments are implemented for IBP "
        f"only, not {getattr(transform, '__name__', transform)}."
      )
    bounds, state = ibp(self.train_mode, has_aux=True)(
      self.variables, input_set, spec=spec
    )
    return bounds, state[RUNNING_STATS]

  def train_mode(self, variables, x):
    """``apply`` in train mode: (output, {running statistics, updated})."""
    return self.apply(variables, x, train=True, mutable=[RUNNING_STATS])


def clean_pass(model, params, batch_stats, images):
  """Train-mode forward pass: logits, new running stats, the batch's moments."""
  logits, state = model.apply(
    {"params": params, "batch_stats": batch_stats},
    images,
    train=True,
    mutable=["batch_stats", "batch_moments"],
  )
  return (
    logits,
    state.get("batch_stats", batch_stats),
    state.get("batch_moments", batch_stats),
  )


def moment_subset(images: jax.Array, examples: int) -> jax.Array:
  """Every (B // m)-th example of the batch: the m whose moments stand for it.

  Ghost statistics (Hoffer et al., 2017, "Train longer, generalize better"):
  BatchNorm moments estimated from m of the batch's B clean examples. The
  batch is shuffled, so the choice is a random sample; it is strided rather
  than a prefix so that a batch sharded over devices keeps an equal share
  of the m on every device.

  Args:
    images: [B, ...] the clean batch.
    examples: m; 0, or m ≥ B, keeps the whole batch.

  Returns:
    [min(m, B), ...] (or the batch itself).
  """
  batch = images.shape[0]
  if not examples or examples >= batch:
    return images
  stride = batch // examples
  return images[: stride * examples : stride]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy [B]."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def worst_case_logits(margin_lower: jax.Array) -> jax.Array:
  """o = [0, −lb_1, …, −lb_{K−1}]: logits whose class 0 is the label (docs/method.md §2)."""
  return pad_margins(margin_lower)


def robust_cross_entropy(margin_lower: jax.Array) -> jax.Array:
  """Per-example robust CE, CE(o, 0) with o = `worst_case_logits` [B]."""
  o = worst_case_logits(margin_lower)
  return cross_entropy(o, jnp.zeros(o.shape[0], jnp.int32))


def certified(margin_lower: jax.Array) -> jax.Array:
  """Whether every margin is provably positive, per example [B]."""
  return jnp.all(margin_lower > 0, axis=-1)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def ibp_linf_margins(network: Network, images, labels, eps) -> jax.Array:
  """Margin lower bounds over B∞(x, ε) ∩ [0, 1] by IBP [B, K-1]."""
  return network.margin_bounds(
    LinfBall(images, eps, domain=DOMAIN), labels
  ).lower
