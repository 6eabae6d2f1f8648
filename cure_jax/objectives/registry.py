"""`make_objective`: the training objective a config asks for.

Every objective has the form of docs/method.md §3,

    L = (1 − κ)·L_rob + κ·CE(clean) + λ_l1·Σ|θ| + s·R_warmup,

and differs only in its robust term L_rob, built here from the per-example
losses of `robust_losses` and the CURE combinations of `multi_norm` and
`bound_alignment`. Gradient projection acts on parameters, not on the loss,
and lives in the training loop.

Methods (``config.method``):

  natural        clean cross-entropy only
  ibp            IBP over B∞(x, ε∞) (Gowal et al., 2018)
  sabr           SABR small boxes, l∞ (Müller et al., 2023)
  crown_ibp      CROWN-IBP over B∞(x, ε∞) (Zhang et al., 2020)
  pgd_linf       PGD adversarial training, l∞ (Madry et al., 2018)
  pgd_l2         PGD adversarial training, l2
  l2             the l2 certified loss (``config.l2_variant``)
  cure_joint     (1 − α)·L∞ + α·L2
  cure_max       mean max(L∞, L2)
  cure_random    L∞ on one half of the batch, L2 on the other
  cure_scratch   Max + bound alignment (+ gradient projection in the loop)
  cure_finetune  Max (or Joint) + bound alignment from an l∞ checkpoint
  patch_ibp      IBP over sampled p×p patch positions (Chiang et al., 2020)
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from cure_jax.bounds import LinfBall, crown_ibp, ibp
from cure_jax.objectives import (
  adversarial,
  bound_alignment,
  multi_norm,
  patch_training,
  regularizers,
  robust_losses,
)
from cure_jax.objectives.base import (
  DOMAIN,
  Batch,
  Metrics,
  Network,
  Objective,
  StepContext,
  accuracy,
  clean_pass,
  cross_entropy,
  moment_subset,
)

RobustTerm = Callable[[Network, Batch, StepContext], tuple[jax.Array, Metrics]]

L2_VARIANTS = {
  "sabr_box": robust_losses.l2_sabr_box,
  "certified": robust_losses.l2_certified,
}
CURE_COMBINATIONS = ("joint", "max", "random")


def _keys(ctx: StepContext):
  return jax.random.split(ctx.rng, 3)


def _linf_loss(config, network, batch, ctx, key):
  if config.lambda_linf >= 1.0:
    return robust_losses.ibp_linf(
      network, batch.images, batch.labels, ctx.eps_linf
    )
  return robust_losses.sabr_linf(
    network,
    batch.images,
    batch.labels,
    ctx.eps_linf,
    lam=config.lambda_linf,
    key=key,
    pgd_steps=config.pgd_steps,
  )


def _l2_loss(config, network, batch, ctx, key):
  if config.l2_variant not in L2_VARIANTS:
    raise ValueError(
      f"unknown l2_variant {config.l2_variant!r}; valid ones "
      f"are {sorted(L2_VARIANTS)}."
    )
  return L2_VARIANTS[config.l2_variant](
    network,
    batch.images,
    batch.labels,
    ctx.eps_l2,
    lam=config.lambda_l2,
    key=key,
    pgd_steps=config.pgd_steps,
  )


def _certified_metrics(prefix, robust):
  return {
    f"{prefix}_loss": robust.loss.mean(),
    f"{prefix}_certified": robust.certified.mean(),
  }


# Metrics key under which a term returns the running statistics its
# midpoint-moment pass updated (popped by the objective, never logged).
UPDATED_STATS = "updated_batch_stats"


def _updated_stats(robust) -> Metrics:
  return (
    {} if robust.batch_stats is None else {UPDATED_STATS: robust.batch_stats}
  )


def _ibp_term(config, network, batch, ctx):
  del config
  robust = robust_losses.ibp_linf(
    network, batch.images, batch.labels, ctx.eps_linf
  )
  return robust.loss.mean(), {
    **_certified_metrics("linf", robust),
    **_updated_stats(robust),
  }


def _sabr_term(config, network, batch, ctx):
  robust = _linf_loss(config, network, batch, ctx, _keys(ctx)[0])
  return robust.loss.mean(), {
    **_certified_metrics("linf", robust),
    **_updated_stats(robust),
  }


def _l2_term(config, network, batch, ctx):
  robust = _l2_loss(config, network, batch, ctx, _keys(ctx)[1])
  return robust.loss.mean(), {
    **_certified_metrics("l2", robust),
    **_updated_stats(robust),
  }


def _crown_ibp_term(config, network, batch, ctx):
  del config
  margins = network.margin_bounds(
    LinfBall(batch.images, ctx.eps_linf, domain=DOMAIN),
    batch.labels,
    transform=functools.partial(crown_ibp, bound="lower"),
  )
  robust = robust_losses.RobustLoss(
    robust_losses.robust_cross_entropy(margins.lower),
    None,
    jnp.all(margins.lower > 0, -1),
  )
  return robust.loss.mean(), _certified_metrics("linf", robust)


def _pgd_term(norm, config, network, batch, ctx):
  eps = ctx.eps_linf if norm == "linf" else ctx.eps_l2
  step_size = config.pgd_step_fraction * eps
  losses, _ = adversarial.pgd_training_loss(
    network,
    batch.images,
    batch.labels,
    norm=norm,
    eps=eps,
    steps=config.pgd_steps,
    step_size=step_size,
    key=_keys(ctx)[0],
  )
  return losses.mean(), {f"pgd_{norm}_loss": losses.mean()}


def _patch_term(config, network, batch, ctx):
  """Random-patch IBP; the ε ramp's progress ε/ε_end widens the window's box."""
  progress = ctx.eps_linf / config.eps_linf if config.eps_linf else 1.0
  robust = patch_training.random_patch_ibp(
    network,
    batch.images,
    batch.labels,
    size=config.patch.size,
    positions=config.patch.train_positions,
    key=_keys(ctx)[0],
    fraction=jnp.clip(progress, 0.0, 1.0),
  )
  return robust.loss.mean(), _certified_metrics("patch", robust)


def _take(batch: Batch, idx) -> Batch:
  return Batch(batch.images[idx], batch.labels[idx])


def _cure_term(config, network, batch, ctx):
  """CURE: l∞ and l2 small-box losses combined, plus bound alignment."""
  cure = config.cure
  if cure.combine not in CURE_COMBINATIONS:
    raise ValueError(
      f"unknown cure.combine {cure.combine!r}; valid ones are "
      f"{list(CURE_COMBINATIONS)}."
    )
  k_inf, k_2, k_split = _keys(ctx)
  if cure.combine == "random":
    if cure.ba_weight:
      raise ValueError(
        "bound alignment needs both bounds on every example; "
        "it cannot be combined with cure.combine='random'."
      )
    linf_idx, l2_idx = multi_norm.random_partition(
      k_split, batch.labels.shape[0]
    )
    linf = _linf_loss(config, network, _take(batch, linf_idx), ctx, k_inf)
    l2 = _l2_loss(config, network, _take(batch, l2_idx), ctx, k_2)
    loss = multi_norm.random_loss(linf.loss, l2.loss)
  else:
    linf = _linf_loss(config, network, batch, ctx, k_inf)
    l2 = _l2_loss(config, network, batch, ctx, k_2)
    loss = (
      multi_norm.joint(linf.loss, l2.loss, cure.alpha)
      if cure.combine == "joint"
      else multi_norm.maximum(linf.loss, l2.loss)
    )
  metrics = {
    **_certified_metrics("linf", linf),
    **_certified_metrics("l2", l2),
    **_updated_stats(linf),
  }  # the l∞ pass's moments (all examples)
  if cure.ba_weight:
    ba = bound_alignment.bound_alignment(
      linf.logits,
      l2.logits,
      linf.certified,
      l2.certified,
      direction=cure.ba_direction,
      stop_gradient=cure.ba_stop_gradient,
    )
    loss = loss + cure.ba_weight * ba
    metrics["bound_alignment"] = ba
  return loss, metrics


ROBUST_TERMS: dict[str, Callable] = {
  "natural": None,
  "ibp": _ibp_term,
  "sabr": _sabr_term,
  "crown_ibp": _crown_ibp_term,
  "pgd_linf": functools.partial(_pgd_term, "linf"),
  "pgd_l2": functools.partial(_pgd_term, "l2"),
  "l2": _l2_term,
  "cure_joint": _cure_term,
  "cure_max": _cure_term,
  "cure_random": _cure_term,
  "cure_scratch": _cure_term,
  "cure_finetune": _cure_term,
  "patch_ibp": _patch_term,
}
METHODS = tuple(ROBUST_TERMS)


# BatchNorm moments of the bounded pass once κ = 0 (`config.bn_moments`).
CLEAN, MIDPOINT = "clean", "midpoint"
# Methods whose every bounded pass is IBP, and so may use midpoint moments.
MIDPOINT_METHODS = (
  "ibp",
  "sabr",
  "l2",
  "cure_joint",
  "cure_max",
  "cure_random",
  "cure_scratch",
  "cure_finetune",
)


def check_bn_moments(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError for an unknown ``bn_moments`` or a method without it."""
  bn_moments = config.get("bn_moments", CLEAN)
  if bn_moments not in (CLEAN, MIDPOINT):
    raise ValueError(
      f"unknown bn_moments {bn_moments!r}; valid ones are {[CLEAN, MIDPOINT]}."
    )
  if bn_moments == MIDPOINT and config.method not in MIDPOINT_METHODS:
    raise ValueError(
      f"bn_moments='midpoint' needs a method whose bounded passes are all "
      f"IBP, one of {list(MIDPOINT_METHODS)}; got {config.method!r}. Use "
      "bn_moments='clean'."
    )


def check_method(method: str) -> None:
  if method not in ROBUST_TERMS:
    raise ValueError(
      f"unknown method {method!r}; valid methods are {list(METHODS)}."
    )


def _warmup_term(network: Network, batch: Batch, ctx: StepContext):
  """Shi et al.'s warm-up regularizers on IBP bounds of B∞(x, ε∞)."""
  input_set = LinfBall(batch.images, ctx.eps_linf, domain=DOMAIN)
  if network.midpoint_moments:
    (_, preactivations), _ = ibp(
      network.train_mode, return_preactivations=True, has_aux=True
    )(network.variables, input_set)
  else:
    spec_free = ibp(network.apply, return_preactivations=True)
    _, preactivations = spec_free(network.variables, input_set, train=False)
  input_radius = input_set.bounding_box().radius.mean()
  return regularizers.warmup_regularizer(preactivations, input_radius)


def make_objective(
  config: ml_collections.ConfigDict,
  model,
  *,
  robust: bool = True,
  warmup: bool | None = None,
  kappa_is_zero: bool = False,
) -> Objective:
  """The objective of ``config.method`` for ``model`` (see module doc).

  Which terms are computed is fixed when the objective is built, not decided
  by a traced ``lax.cond``: under ``grad`` a conditional around a bound pass
  costs about 12× the pass itself on XLA's CPU backend (measured on the small
  CNN), so the training loop builds one objective per phase of training.

  Args:
    config: the run's config.
    model: the Flax model.
    robust: compute the robust term, weighted by 1 − κ (False in the natural
      epochs, where κ = 1 and the term would be multiplied by 0).
    warmup: add Shi et al.'s warm-up regularizers, weighted by
      ``ctx.reg_scale`` (during the ε ramp); defaults to
      ``config.warmup_reg``. Methods without a robust term never add them.
    kappa_is_zero: the caller guarantees ``ctx.kappa == 0`` (every step after
      the natural epochs): the clean CE is then left out of the loss and
      differentiated only through BatchNorm's batch moments — and not at all
      when ``config.bn_moment_gradients`` is False, which makes the moments
      constants of the bounded pass. Only then do the faster moment options
      apply: ``config.bn_moment_examples`` (the clean pass on a subset,
      `moment_subset`) and ``config.bn_moments = 'midpoint'`` (no clean pass:
      each BatchNorm of the bounded pass normalizes with the moments of its
      input bounds' midpoints, which also update the running statistics; the
      attacks use the running statistics).

  Returns:
    ``objective(params, batch_stats, batch, ctx)``.
  """
  check_method(config.method)
  robust_term = ROBUST_TERMS[config.method] if robust else None
  with_warmup = (config.warmup_reg if warmup is None else warmup) and (
    ROBUST_TERMS[config.method] is not None
  )
  num_classes = config.model.num_classes
  clean_is_metric = kappa_is_zero and robust_term is not None
  moment_gradients = config.get("bn_moment_gradients", True)
  # After the natural epochs the clean pass only yields the moments, so it
  # may run on a subset of the batch (`moment_subset`).
  moment_examples = (
    config.get("bn_moment_examples", 0) if clean_is_metric else 0
  )

  check_bn_moments(config)
  midpoint = config.get("bn_moments", CLEAN) == MIDPOINT and clean_is_metric

  def objective(params, batch_stats, batch: Batch, ctx: StepContext):
    if midpoint:
      # No clean pass: the bounded pass normalizes with its own midpoints'
      # moments and updates the running statistics.
      network = Network(
        model.apply,
        {"params": params, "batch_stats": batch_stats},
        num_classes,
        midpoint_moments=True,
      )
      loss, metrics = robust_term(config, network, batch, ctx)
      new_stats = metrics.pop(UPDATED_STATS)
      metrics["robust_loss"] = loss
    else:
      network, loss, new_stats, metrics = _with_clean_moments(
        params, batch_stats, batch, ctx
      )
    if with_warmup:
      reg = _warmup_term(network, batch, ctx)
      loss = loss + ctx.reg_scale * reg
      metrics["warmup_reg"] = reg
    if config.l1_reg:
      l1 = regularizers.l1_penalty(params)
      loss = loss + config.l1_reg * l1
      metrics["l1"] = l1
    metrics["loss"] = loss
    return loss, (new_stats, metrics)

  def _with_clean_moments(params, batch_stats, batch, ctx):
    """The reference: the clean pass's moments are the bounded pass's."""
    clean_images = moment_subset(batch.images, moment_examples)
    logits, new_stats, moments = clean_pass(
      model, params, batch_stats, clean_images
    )
    if not moment_gradients:
      moments = jax.lax.stop_gradient(moments)
    if clean_is_metric:
      logits = jax.lax.stop_gradient(logits)
    clean_labels = moment_subset(batch.labels, moment_examples)
    clean = cross_entropy(logits, clean_labels).mean()
    metrics = {"clean_loss": clean, "accuracy": accuracy(logits, clean_labels)}
    loss = clean
    network = Network(
      model.apply, {"params": params, "batch_stats": moments}, num_classes
    )
    if robust_term is not None:
      robust_loss, robust_metrics = robust_term(config, network, batch, ctx)
      robust_metrics.pop(UPDATED_STATS, None)
      loss = (
        robust_loss
        if clean_is_metric
        else (1.0 - ctx.kappa) * robust_loss + ctx.kappa * clean
      )
      metrics.update(robust_metrics, robust_loss=robust_loss)
    return network, loss, new_stats, metrics

  return objective
