"""The certification cascade: cheap bounds first, tighter ones on the rest.

A test point x with label y is certified against the threat model
B_p(x, ε) ∩ [0, 1]^d when a sound lower bound on every margin
z_y − z_j (j ≠ y) over that set is positive (docs/method.md §2, margin spec C with
rows e_y − e_j folded into the last layer). The bound methods form a chain
of increasing cost and tightness — IBP, CROWN, α-CROWN — and the cascade
runs them in order: a stage bounds only the points that are correctly
classified on the clean input and not yet certified by an earlier stage, so
a point misclassified at x is never certified, and a certified point is
never revisited (adding stages can only add certificates).

Cost. Each later stage runs on a *gathered* batch: the indices of the
pending points are collected on the host and padded (with copies of the
first pending point) to the smallest size ⌈B / 2^k⌉ ≥ their number,
k = 0, …, 4. α-CROWN, by far the most expensive stage, then runs on the
points the cheap stages left over — typically a small fraction — instead of
the whole batch, while each stage is compiled for at most five shapes. Bounds
are per example (BatchNorm in eval mode is an affine map; α-CROWN's slopes
and Adam's updates are per example), so gathering does not change any bound.
The price is one host synchronization per stage. Inside `jax.jit` that is
impossible, so ``gather=False`` runs every stage on the full batch (skipped
by `jax.lax.cond` when nothing is pending) and merges the results with masks;
both modes give the same certificates.

Memory. Before a gathered stage runs, XLA's buffer assignment of its
executable tells how much memory it needs (`memory_budget`); a stage over
the budget (``memory_budget_gb``, by default half the memory available)
runs in chunks that fit, and one that does not fit even for a single point
raises `memory_budget.MemoryBudgetError` naming the stage, the model and the
budget — never an out-of-memory abort.

Known counterexamples. Points for which an attack has already found a
misclassified point of the input set (``known_falsified``) cannot be
certified by any sound bound, so no stage bounds them: the certificates are
the same, and α-CROWN, which mostly meets exactly such points, does a
fraction of its work.

Branch and bound. With ``bab_seconds > 0`` the points the bound stages left
open go to β-CROWN branch and bound (`branch_and_bound`), up to that many
seconds each: it certifies some ("bab" stage) and finds checked
counterexamples for others (``falsified``); the rest stay undecided.

Certification runs in float32 (parameters and inputs are cast) under
`certification_precision()`.
"""

import functools
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax import bounds
from cure_jax.bounds import example_groups
from cure_jax.certify import branch_and_bound, memory_budget, stage_timing
from cure_jax.models.call_adapter import adapt_apply
from cure_jax.parallel.precision import cast_floating, certification_precision
from cure_jax.types import NORMS, PIXEL_DOMAIN, PyTree

ApplyFn = Callable[..., jax.Array]

NOT_CERTIFIED = -1
# The stage name of branch and bound (its method_index is len(methods)).
BAB_STAGE = "bab"
DEFAULT_BOUND_METHODS = ("ibp", "crown", "alpha_crown")
BALLS = {"linf": bounds.LinfBall, "l2": bounds.L2Ball, "l1": bounds.L1Ball}
# A gathered stage batch has one of the sizes ceil(B / 2^k), k = 0, ..., 4.
_GATHER_HALVINGS = 4


def _transform(method: str, alpha_steps: int) -> Callable[[Callable], Callable]:
  """The bound transform called ``method`` (see `BOUND_METHODS`).

  α-CROWN's loop stays rolled (a stage compiles for up to five gathered
  batch sizes): unrolled, 20 steps on the small CNN compiled 5–7× longer
  and ran 2.7–2.9× slower on a CPU.
  """

  # Certificates need lower bounds of the margins only: bound="lower" skips
  # the upper ones, half of every linear-bound stage's backward rows.
  def alpha(**options):
    return functools.partial(
      bounds.alpha_crown, steps=alpha_steps, bound="lower", unroll=1, **options
    )

  return {
    "ibp": bounds.ibp,
    "crown_ibp": functools.partial(bounds.crown_ibp, bound="lower"),
    # Cache-sized passes: the same bounds, 20 examples at a time.
    "crown": functools.partial(
      bounds.crown, bound="lower", example_group=example_groups.CROWN_GROUP
    ),
    "alpha_crown": alpha(),
    # Every layer's slopes, one set per hidden layer's pass shared by its
    # rows: per-row slopes cost rows × units per layer (CNN7: too many).
    "alpha_crown_shared": alpha(share_slopes=True),
    # α-CROWN over IBP intermediate bounds: CROWN's identity backward pass
    # per hidden layer costs memory quadratic in its width (large CNNs).
    "alpha_crown_ibp": alpha(intermediate="ibp"),
  }[method]


BOUND_METHODS = (
  "ibp",
  "crown_ibp",
  "crown",
  "alpha_crown",
  "alpha_crown_shared",
  "alpha_crown_ibp",
)


class CascadeResult(NamedTuple):
  """Per-point outcome of the cascade.

  Attributes:
    certified: [B] bool, correctly classified and certified by some stage.
    method_index: [B] int32, the index in ``methods`` of the stage that
      certified the point, `NOT_CERTIFIED` (-1) if none did.
    margins_lower: [B] float32, min_j of the lower bounds on z_y − z_j from
      the last bound stage that bounded the point (the certifying one if
      certified by a bound stage); −∞, the trivial bound, where no stage ran
      (misclassified or padding points).
    falsified: [B] bool, a point of the input set where the model is wrong
      is known: passed in (``known_falsified``, e.g. an attack's) or found
      by branch and bound (checked by a forward pass); never with
      ``certified``.
  """

  certified: jax.Array
  method_index: jax.Array
  margins_lower: jax.Array
  falsified: jax.Array


class StageReport(NamedTuple):
  """What one stage of one `certify_batch` call did (host-side numbers).

  Attributes:
    method: the bound method.
    points: points it bounded (pending, real rows).
    rows: rows it computed (``points`` plus gather padding, or the batch).
    certified: points it certified that no earlier stage had.
    compile_seconds: lowering and compiling (≈ 0 once cached).
    run_seconds: bounding, excluding compilation.
    falsified: points it falsified (branch and bound only).
  """

  method: str
  points: int
  rows: int
  certified: int
  compile_seconds: float
  run_seconds: float
  falsified: int = 0


def _logits(
  apply_fn: ApplyFn, variables: PyTree, images: jax.Array
) -> jax.Array:
  return apply_fn(variables, images, train=False)


_logits_jit = jax.jit(_logits, static_argnums=0)


def predict(
  apply_fn: ApplyFn,
  variables: PyTree,
  images: jax.Array,
  num_classes: int | None = None,
) -> jax.Array:
  """Clean predictions in float32, the ones the cascade certifies against.

  Args:
    apply_fn: ``apply_fn(variables, x, train=False) -> logits [B, K]``, or
      a Flax module, ``train`` optional (`models.call_adapter`).
    variables: the model's variables (cast to float32).
    images: [B, ...] inputs in [0, 1].
    num_classes: if given, checked against the number of logits.

  Returns:
    [B] int32 argmax of the logits.

  Raises:
    ValueError: if the model does not output [B, num_classes] logits.
  """
  apply_fn = adapt_apply(apply_fn)
  variables = cast_floating(variables, jnp.float32)
  images = jnp.asarray(images, jnp.float32)
  with certification_precision():
    logits = _logits_jit(apply_fn, variables, images)
  if logits.ndim != 2 or (
    num_classes is not None and logits.shape[1] != num_classes
  ):
    raise ValueError(
      f"the model returns logits of shape {logits.shape} for inputs of "
      f"shape {images.shape}; expected [{images.shape[0]}, "
      f"{num_classes or 'K'}]. Is num_classes right?"
    )
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def bound_margins(
  apply_fn: ApplyFn,
  variables: PyTree,
  images: jax.Array,
  labels: jax.Array,
  *,
  norm: str,
  eps,
  method: str,
  num_classes: int,
  alpha_steps: int = 20,
) -> jax.Array:
  """Lower bounds on the margins z_y − z_j over B_p(x, ε) ∩ [0, 1]^d.

  Pure and jit-able (``norm``, ``method``, ``num_classes``, ``alpha_steps``
  static).

  Args:
    apply_fn: ``apply_fn(variables, x, train=False) -> logits [B, K]``, or
      a Flax module, ``train`` optional (`models.call_adapter`).
    variables: the model's variables.
    images: [B, ...] centres x in [0, 1].
    labels: [B] integer labels y.
    norm: ``'linf'``, ``'l2'`` or ``'l1'``.
    eps: radius ε, scalar or [B].
    method: one of `BOUND_METHODS`.
    num_classes: K.
    alpha_steps: optimization steps of the α-CROWN methods.

  Returns:
    [B, K − 1] lower bounds, one per j ≠ y (in increasing order of j).
  """
  ball = BALLS[norm](images, eps, domain=PIXEL_DOMAIN)
  bounded = _transform(method, alpha_steps)(adapt_apply(apply_fn))
  spec = bounds.margin_spec(labels, num_classes)
  return bounded(variables, ball, train=False, spec=spec).lower


def _min_margin(
  apply_fn,
  norm,
  method,
  num_classes,
  alpha_steps,
  variables,
  images,
  labels,
  eps,
) -> jax.Array:
  """[B] min_j of `bound_margins` (positional, for `jax.jit`)."""
  margins = bound_margins(
    apply_fn,
    variables,
    images,
    labels,
    norm=norm,
    eps=eps,
    method=method,
    num_classes=num_classes,
    alpha_steps=alpha_steps,
  )
  return jnp.min(margins, axis=-1)


_min_margin_jit = bounds.jit(_min_margin, static_argnums=range(5))


def _merge_stage(
  result: CascadeResult, stage_margin: jax.Array, stage: int, active: jax.Array
) -> CascadeResult:
  """Folds one stage's [B] min margins, valid where ``active``, into result."""
  newly = active & (stage_margin > 0)
  return CascadeResult(
    certified=result.certified | newly,
    method_index=jnp.where(newly, jnp.int32(stage), result.method_index),
    margins_lower=jnp.where(active, stage_margin, result.margins_lower),
    falsified=result.falsified,
  )


def _initial_result(batch: int) -> CascadeResult:
  return CascadeResult(
    jnp.zeros((batch,), bool),
    jnp.full((batch,), NOT_CERTIFIED, jnp.int32),
    jnp.full((batch,), -jnp.inf, jnp.float32),
    jnp.zeros((batch,), bool),
  )


def gather_size(num_pending: int, batch: int) -> int:
  """Rows of a gathered stage batch: min{⌈B/2^k⌉ ≥ n : k = 0, …, 4}.

  Args:
    num_pending: n, the points to bound (1 <= n <= B).
    batch: B.

  Returns:
    The padded size.
  """
  sizes = [-(-batch // 2**k) for k in range(_GATHER_HALVINGS + 1)]
  return min(size for size in sizes if size >= num_pending)


def _gather_indices(pending: np.ndarray) -> np.ndarray:
  """Indices of the pending rows, padded with the first of them."""
  rows = np.flatnonzero(pending)
  size = gather_size(len(rows), len(pending))
  return np.concatenate([rows, np.full(size - len(rows), rows[0])])


def _run_stage_within_budget(
  static: tuple, arrays: tuple, rows: np.ndarray, budget: int
) -> stage_timing.Timed:
  """`_min_margin_jit` on ``rows`` of the batch, in chunks that fit
  ``budget`` bytes (`memory_budget.fit_batch`).

  Args:
    static: (apply_fn, norm, method, num_classes, alpha_steps).
    arrays: (variables, images, labels, eps) of the whole batch.
    rows: the batch rows to bound.
    budget: bytes.

  Returns:
    `Timed` with the [len(rows)] min margins.

  Raises:
    MemoryBudgetError: if one point does not fit.
  """
  variables, images, labels, eps = arrays

  def args_at(part):
    part_eps = jnp.take(eps, part) if jnp.ndim(eps) else eps
    return (
      variables,
      jnp.take(images, part, axis=0),
      jnp.take(labels, part),
      part_eps,
    )

  def compile_at(size):
    return _min_margin_jit.lower(*static, *args_at(rows[:size])).compile()

  def estimate_at(size):
    stage = functools.partial(_min_margin, *static)
    return memory_budget.analytic_bytes(stage, *args_at(rows[:size]))

  apply_fn, norm, method = static[:3]
  what = (
    f"bound stage {method!r} ({norm}) of model "
    f"{memory_budget.describe_model(apply_fn)}"
  )
  with certification_precision():
    start = time.perf_counter()
    chunk, compiled = memory_budget.fit_batch(
      compile_at, len(rows), budget, what, estimate_at
    )
    compiled_at = time.perf_counter()
    margins = [
      np.asarray(jax.block_until_ready(compiled(*args_at(part))))[:used]
      for part, used in memory_budget.chunk_rows(rows, chunk)
    ]
  return stage_timing.Timed(
    np.concatenate(margins),
    compiled_at - start,
    time.perf_counter() - compiled_at,
  )


def _branch_and_bound_stage(
  apply_fn,
  variables,
  images,
  labels,
  eps,
  pending: np.ndarray,
  *,
  norm: str,
  num_classes: int,
  settings: branch_and_bound.BaBSettings,
) -> tuple[np.ndarray, np.ndarray, StageReport]:
  """β-CROWN branch and bound on the pending points, one at a time.

  Returns:
    ([B] verified, [B] falsified, the stage's report).
  """
  batch = len(pending)
  verified = np.zeros((batch,), bool)
  falsified = np.zeros((batch,), bool)
  run_seconds, compile_seconds = 0.0, 0.0
  eps = np.broadcast_to(np.asarray(eps, np.float32), (batch,))
  images, labels = np.asarray(images), np.asarray(labels)
  for i in np.flatnonzero(pending):
    start = time.perf_counter()
    outcome = branch_and_bound.verify_point(
      apply_fn,
      variables,
      images[i],
      int(labels[i]),
      norm=norm,
      eps=float(eps[i]),
      num_classes=num_classes,
      settings=settings,
      key=jax.random.PRNGKey(int(i)),
    )
    verified[i] = outcome.status == branch_and_bound.VERIFIED
    falsified[i] = outcome.status == branch_and_bound.FALSIFIED
    run_seconds += outcome.seconds
    compile_seconds += time.perf_counter() - start - outcome.seconds
  points = int(pending.sum())
  report = StageReport(
    BAB_STAGE,
    points,
    points,
    int(verified.sum()),
    compile_seconds,
    run_seconds,
    int(falsified.sum()),
  )
  return verified, falsified, report


def _certify_on_host(
  apply_fn,
  variables,
  images,
  labels,
  eps,
  candidates,
  *,
  norm,
  methods,
  alpha_steps,
  num_classes,
  gather,
  budget,
  bab_settings,
  known_falsified,
):
  """The cascade driven from Python: gathered (or full) jitted stages, each
  within the memory budget, then branch and bound if asked for."""
  batch = images.shape[0]
  result = _initial_result(batch)._replace(falsified=known_falsified)
  reports = []
  for stage, method in enumerate(methods):
    pending = np.asarray(candidates & ~result.certified)
    if not pending.any():
      reports.append(StageReport(method, 0, 0, 0, 0.0, 0.0))
      continue
    num_points = int(pending.sum())
    # Gathered: the first num_points rows are the pending points, then padding.
    rows = _gather_indices(pending) if gather else np.arange(batch)
    used = num_points if gather else batch
    timed = _run_stage_within_budget(
      (apply_fn, norm, method, num_classes, alpha_steps),
      (variables, images, labels, eps),
      rows,
      budget,
    )
    stage_margin = np.full((batch,), -np.inf, np.float32)
    stage_margin[rows[:used]] = np.asarray(timed.value)[:used]
    before = int(np.sum(result.certified))
    result = _merge_stage(
      result, jnp.asarray(stage_margin), stage, jnp.asarray(pending)
    )
    reports.append(
      StageReport(
        method,
        num_points,
        len(rows),
        int(np.sum(result.certified)) - before,
        timed.compile_seconds,
        timed.run_seconds,
      )
    )
  if bab_settings is not None:
    pending = np.asarray(candidates & ~result.certified)
    verified, falsified, stage_report = _branch_and_bound_stage(
      apply_fn,
      variables,
      images,
      labels,
      eps,
      pending,
      norm=norm,
      num_classes=num_classes,
      settings=bab_settings,
    )
    result = result._replace(
      certified=result.certified | jnp.asarray(verified),
      method_index=jnp.where(
        jnp.asarray(verified), jnp.int32(len(methods)), result.method_index
      ),
      falsified=result.falsified | jnp.asarray(falsified),
    )
    reports.append(stage_report)
  return result, tuple(reports)


def _certify_traced(
  apply_fn,
  variables,
  images,
  labels,
  eps,
  candidates,
  *,
  norm,
  methods,
  alpha_steps,
  num_classes,
  known_falsified,
):
  """The cascade as one traceable function: full-batch stages and masks."""
  result = _initial_result(images.shape[0])._replace(falsified=known_falsified)
  for stage, method in enumerate(methods):
    pending = candidates & ~result.certified
    stage_margin = jax.lax.cond(
      jnp.any(pending),
      lambda: _min_margin_jit(
        apply_fn,
        norm,
        method,
        num_classes,
        alpha_steps,
        variables,
        images,
        labels,
        eps,
      ),
      lambda: jnp.full(images.shape[:1], -jnp.inf, jnp.float32),
    )
    result = _merge_stage(result, stage_margin, stage, pending)
  return result


def _check_arguments(
  images,
  labels,
  eps,
  valid,
  known_falsified,
  norm,
  methods,
  alpha_steps,
  num_classes,
):
  """Raises a ValueError saying what to fix for malformed arguments."""
  if norm not in BALLS:
    raise ValueError(f"Unknown norm {norm!r}: use one of {NORMS}.")
  if isinstance(methods, str) or not methods:
    raise ValueError(
      f"methods must be a non-empty sequence of names from "
      f"{BOUND_METHODS}, got {methods!r}."
    )
  unknown = [m for m in methods if m not in BOUND_METHODS]
  if unknown:
    raise ValueError(f"Unknown bound method(s) {unknown}: use {BOUND_METHODS}.")
  if not isinstance(alpha_steps, int) or alpha_steps < 0:
    raise ValueError(f"alpha_steps must be an int >= 0, got {alpha_steps!r}.")
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}.")
  batch = jnp.shape(images)[:1]
  if jnp.ndim(images) < 2:
    raise ValueError(
      f"images must be a batch [B, ...], got shape {jnp.shape(images)}."
    )
  if jnp.shape(labels) != batch or not jnp.issubdtype(
    jnp.result_type(labels), jnp.integer
  ):
    raise ValueError(
      f"labels must be integers of shape {batch}, got "
      f"{jnp.result_type(labels)} {jnp.shape(labels)}."
    )
  if jnp.shape(eps) not in ((), batch):
    raise ValueError(
      f"eps must be a scalar or have shape {batch} (one radius "
      f"per point), got shape {jnp.shape(eps)}."
    )
  for name, mask in (("valid", valid), ("known_falsified", known_falsified)):
    if mask is not None and jnp.shape(mask) != batch:
      raise ValueError(
        f"{name} must be a [B] mask of shape {batch}, got {jnp.shape(mask)}."
      )
  if stage_timing.is_traced(images, labels, eps):
    return
  if np.any(np.asarray(eps) < 0) or np.any(np.isnan(np.asarray(eps))):
    raise ValueError(f"eps must be >= 0, got min {np.min(eps)}.")
  if np.any((np.asarray(labels) < 0) | (np.asarray(labels) >= num_classes)):
    raise ValueError(
      f"labels must lie in [0, {num_classes}), got range "
      f"[{np.min(labels)}, {np.max(labels)}]."
    )
  lo, hi = float(jnp.min(images)), float(jnp.max(images))
  if lo < PIXEL_DOMAIN[0] or hi > PIXEL_DOMAIN[1]:
    raise ValueError(
      f"images must lie in [0, 1] (pixel space; the model normalizes), got "
      f"values in [{lo}, {hi}]."
    )


def certify_batch(
  apply_fn: ApplyFn,
  variables: PyTree,
  images: jax.Array,
  labels: jax.Array,
  *,
  norm: str,
  eps,
  num_classes: int,
  methods: Sequence[str] = DEFAULT_BOUND_METHODS,
  alpha_steps: int = 20,
  valid: jax.Array | None = None,
  gather: bool = True,
  return_stage_reports: bool = False,
  memory_budget_gb: float | None = None,
  bab_seconds: float = 0.0,
  bab_settings: branch_and_bound.BaBSettings | None = None,
  known_falsified: jax.Array | None = None,
) -> CascadeResult | tuple[CascadeResult, tuple[StageReport, ...]]:
  """Certifies a batch against B_p(x, ε) ∩ [0, 1]^d with a bound cascade.

  Each stage in ``methods`` bounds the margins of the points that are
  correctly classified, ``valid``, and not certified by an earlier stage; a
  point is certified when all its margin lower bounds are > 0. Stage
  functions are jitted and cached per shape: pass the same ``apply_fn``
  object (e.g. ``model.apply``) on every call, not a fresh lambda.

  Args:
    apply_fn: ``apply_fn(variables, x, train=False) -> logits [B, K]``, or
      a Flax module, ``train`` optional (`models.call_adapter`),
      acting on each example independently.
    variables: the model's variables (floating leaves are cast to float32).
    images: [B, ...] inputs in [0, 1].
    labels: [B] integer labels.
    norm: ``'linf'``, ``'l2'`` or ``'l1'``.
    eps: radius, scalar or [B], >= 0.
    num_classes: K, the number of logits.
    methods: bound methods from `BOUND_METHODS`, cheapest first.
    alpha_steps: optimization steps of the α-CROWN methods.
    valid: optional [B] bool; False rows (batch padding) are never bounded
      nor certified.
    gather: bound each stage only on the pending points, gathered on the
      host (see the module docstring); False runs every stage on the whole
      batch, which also works under `jax.jit`.
    return_stage_reports: also return a `StageReport` per stage (concrete
      inputs only; branch and bound's is last, named `BAB_STAGE`).
    memory_budget_gb: the memory a stage may use, in GiB (None or 0: half
      the memory available, `memory_budget.budget_bytes`); stages over it
      run in chunks (concrete inputs only).
    bab_seconds: if > 0, β-CROWN branch and bound on every point the bound
      stages left open, up to this many seconds per point; its method index
      is ``len(methods)``.
    bab_settings: optional `branch_and_bound.BaBSettings` (its ``seconds``
      and ``memory_budget_gb`` are replaced by the arguments above).
    known_falsified: optional [B] bool, points for which a point of the input
      set where the model is wrong is already known (an attack's checked
      adversarial example: `empirical.pgd_robust` is False). No sound bound
      can certify them, so no stage bounds them, which changes no
      certificate and saves the most expensive stages most of their work;
      they are reported ``falsified``.

  Returns:
    A `CascadeResult`, and the stage reports if asked for.

  Raises:
    ValueError: for malformed arguments, or if ``gather``,
      ``return_stage_reports`` or branch and bound is asked for inside a jax
      transformation.
    MemoryBudgetError: a stage does not fit the budget even for one point.
    UnsupportedPrimitiveError: branch and bound on a network that is not a
      chain of affine operations and ReLUs.
  """
  _check_arguments(
    images,
    labels,
    eps,
    valid,
    known_falsified,
    norm,
    methods,
    alpha_steps,
    num_classes,
  )
  if not float(bab_seconds) >= 0:
    raise ValueError(f"bab_seconds must be >= 0, got {bab_seconds!r}.")
  methods = tuple(methods)
  apply_fn = adapt_apply(apply_fn)
  variables = cast_floating(variables, jnp.float32)
  images = jnp.asarray(images, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  eps = jnp.asarray(eps, jnp.float32)
  candidates = predict(apply_fn, variables, images, num_classes) == labels
  if valid is not None:
    candidates &= jnp.asarray(valid, bool)
  known = jnp.zeros_like(candidates)
  if known_falsified is not None:
    known = candidates & jnp.asarray(known_falsified, bool)
    candidates &= ~known
  options = dict(
    norm=norm,
    methods=methods,
    alpha_steps=alpha_steps,
    num_classes=num_classes,
    known_falsified=known,
  )
  if stage_timing.is_traced(variables, images, labels, eps, candidates):
    if gather or return_stage_reports or bab_seconds > 0:
      raise ValueError(
        "certify_batch is being traced (inside jit/vmap): gather=True, "
        "return_stage_reports=True and bab_seconds > 0 need concrete "
        "arrays, since they synchronize with the host between stages. Pass "
        "gather=False, return_stage_reports=False and bab_seconds=0."
      )
    with certification_precision():
      return _certify_traced(
        apply_fn, variables, images, labels, eps, candidates, **options
      )
  if bab_seconds > 0:
    bab_settings = (bab_settings or branch_and_bound.BaBSettings())._replace(
      seconds=float(bab_seconds), memory_budget_gb=memory_budget_gb
    )
  else:
    bab_settings = None
  result, reports = _certify_on_host(
    apply_fn,
    variables,
    images,
    labels,
    eps,
    candidates,
    gather=gather,
    budget=memory_budget.budget_bytes(memory_budget_gb),
    bab_settings=bab_settings,
    **options,
  )
  return (result, reports) if return_stage_reports else result
