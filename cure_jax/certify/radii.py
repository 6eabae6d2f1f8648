"""Certified and PGD radii: the largest ε per point, by bisection.

A point's certified radius for a norm is the largest ε at which the
certification cascade (`cascade.certify_batch`: IBP, then the tighter stages on
what IBP left) certifies it; its PGD radius the largest ε at which the attack
(`empirical.pgd_robust`) finds no misclassified point. One radius per point
gives the whole accuracy curve: certified accuracy at ε is the fraction of
correctly classified points whose radius is ≥ ε.

Bisection, vectorized over the batch: every point keeps its own bracket
[lo, hi] with lo certified (or 0) and hi not certified (or the bracket's end,
never tested), and each step certifies the whole batch at the per-point
midpoints (a [B] radius) and halves every bracket. After
n = ⌈log2(eps_max / tol)⌉ steps every bracket is at most tol wide, so where
the cascade's certificates are monotone in ε (IBP's are: its bounds only
widen with the ball) the radius returned lies within tol below the
cascade's own largest certified radius. Whatever the
cascade, the returned radius is sound: it is an ε the cascade certified (or
0). Radii of points the cascade certifies at eps_max come back as lower
bounds just under eps_max.

`evaluate` runs the search with a `RadiusSearch` and starts each bracket from
the outcome at the evaluation radius ε₀ — [ε₀, eps_max] where certified,
[0, ε₀] elsewhere — so radius ≥ ε₀ exactly where the point is certified at ε₀.
The PGD search starts at the certified radius (a certified point has no
adversarial example), so PGD radius ≥ certified radius.
"""

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.certify import cascade, empirical, report
from cure_jax.types import PyTree


class RadiusSearch(NamedTuple):
  """What `evaluate` searches radii with.

  Attributes:
    eps_max: norm -> the bracket's upper end; norms left out use
      ``max_factor`` × their evaluation radius.
    max_factor: the default bracket end relative to the evaluation radius.
    relative_tolerance: the bracket width left, relative to the bracket end
      (steps = ⌈log2(1 / relative_tolerance)⌉).
    pgd: also search the PGD radius of the attacked norms (``steps`` PGD
      runs per norm: the costly part).
    examples: search the first this many points only (None: all); the
      others' radius columns hold NaN. Each searched point costs ``steps``
      cascade runs (and PGD runs) per norm, so a subset bounds the cost.
    methods: the cascade of the search, cheapest first (None: the
      evaluation's). Cheaper stages give radii as sound and possibly
      smaller above the evaluation radius; at it nothing changes, since
      every bracket starts from the evaluation's outcome there.
  """

  eps_max: Mapping[str, float] | None = None
  max_factor: float = 2.0
  relative_tolerance: float = 1 / 64
  pgd: bool = True
  examples: int | None = None
  methods: Sequence[str] | None = None


def check_search(search: RadiusSearch) -> RadiusSearch:
  """Returns ``search`` if valid, else raises a ValueError saying why."""
  if not isinstance(search, RadiusSearch):
    raise ValueError(
      f"radius_search must be a RadiusSearch, got {type(search).__name__}."
    )
  if not search.max_factor > 0:
    raise ValueError(f"max_factor must be > 0, got {search.max_factor}.")
  if not 0 < search.relative_tolerance < 1:
    raise ValueError(
      f"relative_tolerance must lie in (0, 1), got {search.relative_tolerance}."
    )
  if search.examples is not None and not (
    isinstance(search.examples, int) and search.examples >= 1
  ):
    raise ValueError(
      f"examples must be an int >= 1 (or None for every point), got "
      f"{search.examples!r}."
    )
  if search.methods is not None and (
    isinstance(search.methods, str)
    or not search.methods
    or set(search.methods) - set(cascade.BOUND_METHODS)
  ):
    raise ValueError(
      f"methods must be a non-empty sequence of names from "
      f"{cascade.BOUND_METHODS} (or None for the evaluation's), got "
      f"{search.methods!r}."
    )
  for norm, eps in (search.eps_max or {}).items():
    report.ordered_norms([norm])
    if not float(eps) > 0:
      raise ValueError(f"eps_max for {norm} must be > 0, got {eps}.")
  return search


def search_end(search: RadiusSearch, norm: str, eps: float) -> float:
  """The bracket's upper end for ``norm`` evaluated at radius ``eps``."""
  given = (search.eps_max or {}).get(norm)
  if given is not None:
    return float(given)
  if not eps > 0:
    raise ValueError(
      f"the evaluation radius of {norm} is 0: give RadiusSearch.eps_max for it."
    )
  return search.max_factor * float(eps)


def searched_rows(
  search: RadiusSearch, start: int, valid: np.ndarray
) -> np.ndarray:
  """[B] bool: the valid rows of the batch starting at point ``start`` that
  are among the first ``search.examples`` points."""
  valid = np.asarray(valid, bool)
  if search.examples is None:
    return valid
  return valid & (start + np.arange(len(valid)) < search.examples)


def bisection_steps(eps_max: float, tolerance: float) -> int:
  """n = ⌈log2(eps_max / tol)⌉ (0 when tol ≥ eps_max): halvings of a bracket
  of width eps_max until it is at most tol wide."""
  if not eps_max > 0 or not tolerance > 0:
    raise ValueError(
      f"eps_max and tolerance must be > 0, got {eps_max} and {tolerance}."
    )
  return max(0, math.ceil(math.log2(eps_max / tolerance)))


def bisect(
  holds: Callable[[np.ndarray], np.ndarray],
  lower: np.ndarray,
  upper: np.ndarray,
  steps: int,
) -> np.ndarray:
  """The largest radius found at which ``holds``, per point.

  Args:
    holds: [B] float32 radii -> [B] bool (e.g. certified at that radius).
    lower: [B] radii known to hold (or 0, by convention).
    upper: [B] radii not known to hold, >= ``lower``.
    steps: halvings of every bracket.

  Returns:
    [B] float32: per point, the last midpoint at which ``holds`` was true,
    else ``lower``. Every midpoint is rounded to float32 before ``holds``
    sees it, so the returned value is exactly one that was tested.
  """
  lower = np.asarray(lower, np.float32)
  upper = np.asarray(upper, np.float32)
  for _ in range(steps):
    middle = ((lower + upper) / 2).astype(np.float32)
    ok = np.asarray(holds(middle), bool)
    lower = np.where(ok, middle, lower)
    upper = np.where(ok, upper, middle)
  return lower


def _bracket(lower, upper, eps_max, batch):
  lower = np.zeros(batch, np.float32) if lower is None else lower
  upper = np.full(batch, eps_max, np.float32) if upper is None else upper
  return (
    np.broadcast_to(np.asarray(lower, np.float32), (batch,)),
    np.broadcast_to(np.asarray(upper, np.float32), (batch,)),
  )


def certified_radii(
  apply_fn: Callable[..., jax.Array],
  variables: PyTree,
  images,
  labels,
  *,
  norm: str,
  eps_max: float,
  tolerance: float,
  num_classes: int,
  methods: Sequence[str] = cascade.DEFAULT_BOUND_METHODS,
  alpha_steps: int = 20,
  valid=None,
  gather: bool = True,
  lower=None,
  upper=None,
) -> np.ndarray:
  """Per point, the largest ε in [0, eps_max] the cascade certifies.

  Args:
    apply_fn: the model, as for `cascade.certify_batch`.
    variables: its variables.
    images: [B, ...] inputs in [0, 1].
    labels: [B] integer labels.
    norm: ``'linf'``, ``'l2'`` or ``'l1'``.
    eps_max: the brackets' upper end (> 0).
    tolerance: the bracket width to reach (> 0); ⌈log2(eps_max / tolerance)⌉
      cascade runs.
    num_classes: K.
    methods: the cascade's bound methods, cheapest first.
    alpha_steps: optimization steps of the α-CROWN methods.
    valid: optional [B] mask; False rows get radius 0 and are never bounded.
    gather: as for `cascade.certify_batch`.
    lower: optional [B] starting lower ends, each certified (default 0).
    upper: optional [B] starting upper ends (default eps_max).

  Returns:
    [B] float32 radii; 0 for misclassified and invalid points.
  """
  lower, upper = _bracket(lower, upper, eps_max, len(labels))

  def certified(eps: np.ndarray) -> np.ndarray:
    result = cascade.certify_batch(
      apply_fn,
      variables,
      images,
      labels,
      norm=norm,
      eps=eps,
      num_classes=num_classes,
      methods=methods,
      alpha_steps=alpha_steps,
      valid=valid,
      gather=gather,
    )
    return np.asarray(result.certified)

  return bisect(certified, lower, upper, bisection_steps(eps_max, tolerance))


def pgd_radii(
  apply_fn: Callable[..., jax.Array],
  variables: PyTree,
  images,
  labels,
  *,
  norm: str,
  eps_max: float,
  tolerance: float,
  key: jax.Array,
  settings: empirical.PGDSettings = empirical.PGDSettings(),
  lower=None,
  upper=None,
) -> np.ndarray:
  """Per point, the largest ε in [0, eps_max] at which PGD finds no attack.

  Args:
    apply_fn: the model, as for `empirical.pgd_robust`.
    variables: its variables.
    images: [B, ...] inputs in [0, 1].
    labels: [B] integer labels.
    norm: ``'linf'``, ``'l2'`` or ``'l1'``.
    eps_max: the brackets' upper end (> 0).
    tolerance: the bracket width to reach (> 0).
    key: PRNG key; step k attacks with ``fold_in(key, k)``.
    settings: the attack.
    lower: optional [B] starting lower ends, e.g. the certified radii
      (default 0).
    upper: optional [B] starting upper ends (default eps_max).

  Returns:
    [B] float32 radii; for a misclassified point its ``lower`` (0 by default).
  """
  lower, upper = _bracket(lower, upper, eps_max, len(labels))
  images = jnp.asarray(images, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  step = itertools.count()

  def robust(eps: np.ndarray) -> np.ndarray:
    return np.asarray(
      empirical.pgd_robust_jit(
        apply_fn,
        norm,
        settings,
        variables,
        images,
        labels,
        jnp.asarray(eps),
        jax.random.fold_in(key, next(step)),
      )
    )

  return bisect(robust, lower, upper, bisection_steps(eps_max, tolerance))


def search_batch(
  apply_fn: Callable[..., jax.Array],
  variables: PyTree,
  images,
  labels,
  valid: np.ndarray,
  *,
  norm: str,
  eps: float,
  search: RadiusSearch,
  certified_at_eps: np.ndarray,
  pgd_robust_at_eps: np.ndarray | None,
  pgd: empirical.PGDSettings | None,
  key: jax.Array,
  **cascade_options,
) -> tuple[np.ndarray, np.ndarray | None]:
  """Certified and PGD radii of one batch, brackets started at ``eps``.

  Certified: [ε₀, end] where certified at ε₀ = min(eps, end), [0, ε₀]
  elsewhere. PGD (when ``pgd`` is given and ``search.pgd``): from the
  certified radius, or ε₀ where the attack failed at ε₀, to end — or to ε₀
  where it succeeded. See the module docstring.

  Args:
    apply_fn, variables, images, labels, valid: the padded batch and model.
    norm: the threat model.
    eps: its evaluation radius.
    search: the search settings.
    certified_at_eps: [B] bool, certified at ``eps`` by the cascade.
    pgd_robust_at_eps: [B] bool, PGD-robust at ``eps``, or None.
    pgd: the attack, or None for no PGD radius.
    key: PRNG key of the PGD radius search.
    **cascade_options: ``num_classes``, ``methods``, ``alpha_steps``,
      ``gather`` for `certified_radii`.

  Returns:
    ([B] certified radii, [B] PGD radii or None).
  """
  end = search_end(search, norm, eps)
  tolerance = search.relative_tolerance * end
  eps0 = np.float32(min(eps, end))
  certified_at_eps = np.asarray(certified_at_eps, bool)
  certified = certified_radii(
    apply_fn,
    variables,
    images,
    labels,
    norm=norm,
    eps_max=end,
    tolerance=tolerance,
    valid=valid,
    lower=np.where(certified_at_eps, eps0, 0),
    upper=np.where(certified_at_eps, end, eps0),
    **cascade_options,
  )
  if pgd is None or not search.pgd:
    return certified, None
  lower, upper = certified, np.full_like(certified, end)
  if pgd_robust_at_eps is not None:
    robust = np.asarray(pgd_robust_at_eps, bool)
    lower = np.where(robust, np.maximum(lower, eps0), lower)
    upper = np.where(robust, upper, np.maximum(eps0, lower))
  attacked = pgd_radii(
    apply_fn,
    variables,
    images,
    labels,
    norm=norm,
    eps_max=end,
    tolerance=tolerance,
    key=key,
    settings=pgd,
    lower=lower,
    upper=upper,
  )
  return certified, np.where(valid, attacked, 0).astype(np.float32)


def summarize_radii(
  records: report.Records, search: RadiusSearch, radii: Mapping[str, float]
) -> dict[str, Any]:
  """The search's settings and, per norm, the mean and median radius over
  the correctly classified searched points (JSON-ready)."""
  correct = np.asarray(records["correct"], bool)
  num = len(correct)
  searched = min(num, search.examples or num)
  correct = correct & (np.arange(num) < searched)
  summary: dict[str, Any] = {
    "relative_tolerance": search.relative_tolerance,
    "steps": bisection_steps(1.0, search.relative_tolerance),
    "eps_max": {n: search_end(search, n, radii[n]) for n in radii},
    "examples": searched,
  }
  if search.methods is not None:
    summary["methods"] = list(search.methods)
  for prefix, key in (
    (report.RADIUS_CERTIFIED, "certified"),
    (report.RADIUS_PGD, "pgd"),
  ):
    per_norm = {}
    for norm in report.ordered_norms(radii):
      column = records.get(prefix + norm)
      if column is not None and correct.any():
        per_norm[norm] = {
          "mean": float(np.mean(column[correct])),
          "median": float(np.median(column[correct])),
        }
    if per_norm:
      summary[key] = per_norm
  return summary
