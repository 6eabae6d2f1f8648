"""`make_objective`: the training objective a config asks for.

Every objective has the form of docs/method.md §3,

    L = (1 − κ)·L_rob + κ·CE(clean) + λ_l1·Σ|θ| + s·R_warmup,

and differs only in its robust term L_rob, built here from the per-example
losses of `robust_losses` and the CURE combinations of `multi_norm` and
`bound_alignment`. Gradient projection acts on parameters, not on the loss,
and lives in the training loop.

The methods (``config.method``) are the records of
`cure_jax.config_schema.TRAINING_METHODS`; each names the kind of robust term
it trains with, a key of `ROBUST_TERMS`. The config values an objective
reads are taken once, into `ObjectiveOptions`.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from cure_jax import config_schema
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
from cure_jax.types import NORMS

L2_VARIANTS = {
  "sabr_box": robust_losses.l2_sabr_box,
  "certified": robust_losses.l2_certified,
}
L1_VARIANTS = ("crown_ibp", "certified")
CURE_COMBINATIONS = ("joint", "max", "random")
PAPER_NORMS = ("linf", "l2")  # CURE as published; other sets go beyond it
# BatchNorm moments of the bounded pass once κ = 0 (`config.bn_moments`).
CLEAN, MIDPOINT = "clean", "midpoint"


class ObjectiveOptions(NamedTuple):
  """The config values an objective reads (`objective_options`).

  Attributes:
    method: the `TrainingMethod` record of ``config.method``.
    eps_linf: the final l∞ training radius (the patch term's ramp progress).
    lambda_linf: SABR's l∞ box fraction λ∞ (1: plain IBP).
    lambda_l2: the l2 box fraction λ2.
    l2_variant: a key of `L2_VARIANTS`.
    lambda_l1: the certified l1 variant's ball fraction λ1.
    l1_variant: one of `L1_VARIANTS`.
    train_norms: the norms CURE combines (`PAPER_NORMS`, or a subset of
      `NORMS` with at least two).
    pgd_steps: PGD steps (SABR's box centre, PGD training).
    pgd_step_fraction: PGD training's step size over ε.
    combine: how CURE combines its l∞ and l2 losses (`CURE_COMBINATIONS`).
    alpha: CURE-Joint's weight of the l2 loss (the paper's two norms).
    weights: CURE-Joint's weight per train norm (empty: uniform).
    ba_weight: the bound-alignment weight λ_BA (0: off).
    ba_direction: "l2_to_linf" or "linf_to_l2".
    ba_stop_gradient: stop the gradient through bound alignment's target.
    patch_size: p of the p×p patches (patch_ibp).
    patch_positions: patch positions sampled per example (patch_ibp).
    warmup_reg: add the warm-up regularizers during the ε ramp.
    l1_reg: λ_l1.
    num_classes: K.
    bn_moments: `CLEAN` or `MIDPOINT`.
    bn_moment_gradients: differentiate through the clean moments.
    bn_moment_examples: clean examples whose moments stand for the batch's
      (0: all).
  """

  method: config_schema.TrainingMethod
  eps_linf: float
  lambda_linf: float
  lambda_l2: float
  l2_variant: str
  lambda_l1: float
  l1_variant: str
  train_norms: tuple[str, ...]
  pgd_steps: int
  pgd_step_fraction: float
  combine: str
  alpha: float
  weights: tuple[float, ...]
  ba_weight: float
  ba_direction: str
  ba_stop_gradient: bool
  patch_size: int
  patch_positions: int
  warmup_reg: bool
  l1_reg: float
  num_classes: int
  bn_moments: str
  bn_moment_gradients: bool
  bn_moment_examples: int


def objective_options(config: ml_collections.ConfigDict) -> ObjectiveOptions:
  """Reads and checks the objective's values of ``config``.

  Raises:
    ValueError: an unknown method, ``l2_variant``, ``cure.combine`` or
      ``bn_moments``; midpoint moments for a method whose bounded passes are
      not all IBP; bound alignment with ``cure.combine='random'``. Each
      message names the valid choices.
  """
  options = ObjectiveOptions(
    method=config_schema.check_method(config.method),
    eps_linf=config.eps_linf,
    lambda_linf=config.lambda_linf,
    lambda_l2=config.lambda_l2,
    l2_variant=config.l2_variant,
    lambda_l1=config.lambda_l1,
    l1_variant=config.l1_variant,
    train_norms=tuple(config.train_norms),
    pgd_steps=config.pgd_steps,
    pgd_step_fraction=config.pgd_step_fraction,
    combine=config.cure.combine,
    alpha=config.cure.alpha,
    weights=tuple(config.cure.weights),
    ba_weight=config.cure.ba_weight,
    ba_direction=config.cure.ba_direction,
    ba_stop_gradient=bool(config.cure.ba_stop_gradient),
    patch_size=config.patch.size,
    patch_positions=config.patch.train_positions,
    warmup_reg=bool(config.warmup_reg),
    l1_reg=config.l1_reg,
    num_classes=config.model.num_classes,
    bn_moments=config.bn_moments,
    bn_moment_gradients=bool(config.bn_moment_gradients),
    bn_moment_examples=config.bn_moment_examples,
  )
  _check_options(options)
  return options


def _check_choice(name: str, value, valid: list) -> None:
  """Raises a ValueError naming the valid choices unless ``value`` is one."""
  if value not in valid:
    raise ValueError(f"unknown {name} {value!r}; valid ones are {valid}.")


def _check_options(options: ObjectiveOptions) -> None:
  _check_choice("l2_variant", options.l2_variant, sorted(L2_VARIANTS))
  _check_choice("cure.combine", options.combine, list(CURE_COMBINATIONS))
  _check_choice("l1_variant", options.l1_variant, list(L1_VARIANTS))
  norms = options.train_norms
  if len(set(norms)) != len(norms) or len(norms) < 2 or set(norms) - set(NORMS):
    raise ValueError(
      f"train_norms must be two or three distinct norms of {NORMS}; got "
      f"{norms!r}."
    )
  if options.weights and len(options.weights) != len(norms):
    raise ValueError(
      f"cure.weights needs one weight per train norm {norms}; got "
      f"{options.weights!r} (or () for uniform weights)."
    )
  if options.method.term == "cure" and options.combine == "random":
    if options.ba_weight:
      raise ValueError(
        "bound alignment needs both bounds on every example; "
        "it cannot be combined with cure.combine='random'."
      )
  _check_bn_moments(options)


def _check_bn_moments(options: ObjectiveOptions) -> None:
  _check_choice("bn_moments", options.bn_moments, [CLEAN, MIDPOINT])
  l1_by_crown = options.l1_variant == "crown_ibp" and (
    options.method.term == "l1"
    or (options.method.term == "cure" and "l1" in options.train_norms)
  )
  if options.bn_moments == MIDPOINT and (
    not options.method.ibp_only or l1_by_crown
  ):
    ibp_only = [
      m.name for m in config_schema.TRAINING_METHODS.values() if m.ibp_only
    ]
    raise ValueError(
      f"bn_moments='midpoint' needs a method whose bounded passes are all "
      f"IBP, one of {ibp_only}; got {options.method.name!r}. Use "
      "bn_moments='clean'."
    )


def _keys(ctx: StepContext):
  return jax.random.split(ctx.rng, 3)


def _linf_loss(opts: ObjectiveOptions, network, batch, ctx, key):
  if opts.lambda_linf >= 1.0:
    return robust_losses.ibp_linf(
      network, batch.images, batch.labels, ctx.eps_linf
    )
  return robust_losses.sabr_linf(
    network,
    batch.images,
    batch.labels,
    ctx.eps_linf,
    lam=opts.lambda_linf,
    key=key,
    pgd_steps=opts.pgd_steps,
  )


def _l2_loss(opts: ObjectiveOptions, network, batch, ctx, key):
  return L2_VARIANTS[opts.l2_variant](
    network,
    batch.images,
    batch.labels,
    ctx.eps_l2,
    lam=opts.lambda_l2,
    key=key,
    pgd_steps=opts.pgd_steps,
  )


def _l1_loss(opts: ObjectiveOptions, network, batch, ctx, key):
  if opts.l1_variant == "certified":
    return robust_losses.l1_certified(
      network,
      batch.images,
      batch.labels,
      ctx.eps_l1,
      lam=opts.lambda_l1,
      key=key,
      pgd_steps=opts.pgd_steps,
    )
  return robust_losses.l1_crown_ibp(
    network, batch.images, batch.labels, ctx.eps_l1
  )


def _l1_key(ctx: StepContext) -> jax.Array:
  return jax.random.fold_in(
    ctx.rng, 3
  )  # beside `_keys`, which stay as they were


# Per-norm certified loss (opts, network, batch, ctx, key) -> RobustLoss.
_NORM_LOSSES = {"linf": _linf_loss, "l2": _l2_loss, "l1": _l1_loss}


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


def _norm_term(norm: str, robust) -> tuple[jax.Array, Metrics]:
  """The mean of one norm's certified loss, its metrics and updated moments."""
  return robust.loss.mean(), {
    **_certified_metrics(norm, robust),
    **_updated_stats(robust),
  }


def _ibp_term(opts, network, batch, ctx):
  del opts
  return _norm_term(
    "linf",
    robust_losses.ibp_linf(network, batch.images, batch.labels, ctx.eps_linf),
  )


def _sabr_term(opts, network, batch, ctx):
  return _norm_term(
    "linf", _linf_loss(opts, network, batch, ctx, _keys(ctx)[0])
  )


def _l2_term(opts, network, batch, ctx):
  return _norm_term("l2", _l2_loss(opts, network, batch, ctx, _keys(ctx)[1]))


def _l1_term(opts, network, batch, ctx):
  return _norm_term("l1", _l1_loss(opts, network, batch, ctx, _l1_key(ctx)))


def _crown_ibp_term(opts, network, batch, ctx):
  del opts
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


def _pgd_term(norm, opts, network, batch, ctx):
  eps = ctx.eps_linf if norm == "linf" else ctx.eps_l2
  step_size = opts.pgd_step_fraction * eps
  losses, _ = adversarial.pgd_training_loss(
    network,
    batch.images,
    batch.labels,
    norm=norm,
    eps=eps,
    steps=opts.pgd_steps,
    step_size=step_size,
    key=_keys(ctx)[0],
  )
  return losses.mean(), {f"pgd_{norm}_loss": losses.mean()}


def _patch_term(opts, network, batch, ctx):
  """Random-patch IBP; the ε ramp's progress ε/ε_end widens the window's box."""
  progress = ctx.eps_linf / opts.eps_linf if opts.eps_linf else 1.0
  robust = patch_training.random_patch_ibp(
    network,
    batch.images,
    batch.labels,
    size=opts.patch_size,
    positions=opts.patch_positions,
    key=_keys(ctx)[0],
    fraction=jnp.clip(progress, 0.0, 1.0),
  )
  return robust.loss.mean(), _certified_metrics("patch", robust)


def _take(batch: Batch, idx) -> Batch:
  return Batch(batch.images[idx], batch.labels[idx])


def _cure_term(opts, network, batch, ctx):
  """CURE: l∞ and l2 small-box losses combined, plus bound alignment."""
  if opts.train_norms != PAPER_NORMS:
    return _cure_over_norms(opts, network, batch, ctx)
  k_inf, k_2, k_split = _keys(ctx)
  if opts.combine == "random":
    linf_idx, l2_idx = multi_norm.random_partition(
      k_split, batch.labels.shape[0]
    )
    linf = _linf_loss(opts, network, _take(batch, linf_idx), ctx, k_inf)
    l2 = _l2_loss(opts, network, _take(batch, l2_idx), ctx, k_2)
    loss = multi_norm.random_loss(linf.loss, l2.loss)
  else:
    linf = _linf_loss(opts, network, batch, ctx, k_inf)
    l2 = _l2_loss(opts, network, batch, ctx, k_2)
    loss = (
      multi_norm.joint(linf.loss, l2.loss, opts.alpha)
      if opts.combine == "joint"
      else multi_norm.maximum(linf.loss, l2.loss)
    )
  metrics = {
    **_certified_metrics("linf", linf),
    **_certified_metrics("l2", l2),
    **_updated_stats(linf),
  }  # the l∞ pass's moments (all examples)
  if opts.ba_weight:
    ba = bound_alignment.bound_alignment(
      linf.logits,
      l2.logits,
      linf.certified,
      l2.certified,
      direction=opts.ba_direction,
      stop_gradient=opts.ba_stop_gradient,
    )
    loss = loss + opts.ba_weight * ba
    metrics["bound_alignment"] = ba
  return loss, metrics


def _cure_over_norms(opts, network, batch, ctx):
  """CURE over ``opts.train_norms`` (docs/method.md §10): each norm's
  certified loss, combined by Joint, Max or Random over N norms, plus bound
  alignment of every other norm with l∞."""
  norms = [n for n in NORMS if n in opts.train_norms]
  k_inf, k_2, k_split = _keys(ctx)
  keys = {"linf": k_inf, "l2": k_2, "l1": _l1_key(ctx)}
  if opts.combine == "random":
    parts = multi_norm.random_partition_over(
      k_split, batch.labels.shape[0], len(norms)
    )
    robust = {
      n: _NORM_LOSSES[n](opts, network, _take(batch, idx), ctx, keys[n])
      for n, idx in zip(norms, parts)
    }
    loss = multi_norm.random_loss_over({n: r.loss for n, r in robust.items()})
  else:
    robust = {
      n: _NORM_LOSSES[n](opts, network, batch, ctx, keys[n]) for n in norms
    }
    losses = {n: r.loss for n, r in robust.items()}
    loss = (
      multi_norm.joint_over(
        losses, dict(zip(opts.train_norms, opts.weights)) or None
      )
      if opts.combine == "joint"
      else multi_norm.maximum_over(losses)
    )
  metrics = {}
  for n, r in robust.items():
    metrics.update(_certified_metrics(n, r))
  metrics.update(_updated_stats(robust[norms[0]]))
  if opts.ba_weight:
    ba = bound_alignment.bound_alignment_over(
      {n: r.logits for n, r in robust.items()},
      {n: r.certified for n, r in robust.items()},
      reference=norms[0],
      direction=_DIRECTION_OVER[opts.ba_direction],
      stop_gradient=opts.ba_stop_gradient,
    )
    loss = loss + opts.ba_weight * ba
    metrics["bound_alignment"] = ba
  return loss, metrics


# The two-norm bound-alignment directions, as directions over N norms.
_DIRECTION_OVER = {
  two: over for over, two in bound_alignment.TWO_NORM_DIRECTION.items()
}


# Robust-term kind (`TrainingMethod.term`) -> the term, a function
# (options, network, batch, ctx) -> (mean loss, metrics).
RobustTerm = Callable[
  [ObjectiveOptions, Network, Batch, StepContext], tuple[jax.Array, Metrics]
]
ROBUST_TERMS: dict[str, RobustTerm] = {
  "ibp": _ibp_term,
  "sabr": _sabr_term,
  "crown_ibp": _crown_ibp_term,
  "pgd_linf": functools.partial(_pgd_term, "linf"),
  "pgd_l2": functools.partial(_pgd_term, "l2"),
  "l2": _l2_term,
  "l1": _l1_term,
  "cure": _cure_term,
  "patch": _patch_term,
}


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

  Raises:
    ValueError: a bad method or option (`objective_options`).
  """
  opts = objective_options(config)
  term = opts.method.term
  robust_term = (
    functools.partial(ROBUST_TERMS[term], opts) if term and robust else None
  )
  with_warmup = (opts.warmup_reg if warmup is None else warmup) and (
    term is not None
  )
  num_classes = opts.num_classes
  clean_is_metric = kappa_is_zero and robust_term is not None
  moment_gradients = opts.bn_moment_gradients
  # After the natural epochs the clean pass only yields the moments, so it
  # may run on a subset of the batch (`moment_subset`).
  moment_examples = opts.bn_moment_examples if clean_is_metric else 0
  midpoint = opts.bn_moments == MIDPOINT and clean_is_metric

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
      loss, metrics = robust_term(network, batch, ctx)
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
    if opts.l1_reg:
      l1 = regularizers.l1_penalty(params)
      loss = loss + opts.l1_reg * l1
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
      robust_loss, robust_metrics = robust_term(network, batch, ctx)
      robust_metrics.pop(UPDATED_STATS, None)
      loss = (
        robust_loss
        if clean_is_metric
        else (1.0 - ctx.kappa) * robust_loss + ctx.kappa * clean
      )
      metrics.update(robust_metrics, robust_loss=robust_loss)
    return network, loss, new_stats, metrics

  return objective
