"""`evaluate`: certify and attack a test set, batch by batch, with timings.

For every batch and every threat model (norm, ε) the bound cascade
(`cascade.certify_batch`) certifies the points and PGD (`empirical`) attacks
them; the per-point outcomes become records and a summary (`report`). The
last batch is padded to the batch size and masked, so every stage compiles
for a bounded set of shapes (the gathered sizes of `cascade.gather_size`),
and each stage's run time, excluding compilation, is accumulated per norm so
that the report can give the seconds per test point of every stage.

Opt-in extras (columns of `report.extend_records`): ``keep_margins`` keeps each
point's min margin lower bound at the evaluation radius, and a
`radii.RadiusSearch` adds each point's largest certified and PGD radius
(bisection), from which accuracy-against-ε curves follow
(``python -m cure_jax.plot``).
"""

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from cure_jax.certify import cascade, empirical, report, stage_timing
from cure_jax.certify import radii as radii_module
from cure_jax.models.call_adapter import adapt_apply
from cure_jax.parallel.global_batch import pad_batch
from cure_jax.parallel.precision import cast_floating
from cure_jax.types import PyTree


def _check_arguments(images, labels, radii, batch_size, pgd, pgd_norms):
  """Raises a ValueError saying what to fix for malformed arguments."""
  if not radii:
    raise ValueError(
      "radii must map at least one norm to its radius, e.g. "
      "{'linf': 0.1, 'l2': 0.5}."
    )
  report.ordered_norms(radii)
  for norm, eps in radii.items():
    if not np.ndim(eps) == 0 or not float(eps) >= 0:
      raise ValueError(f"radius for {norm} must be a scalar >= 0, got {eps!r}.")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
  if len(images) == 0 or len(images) != len(labels):
    raise ValueError(
      f"need as many labels as images, at least one; got "
      f"{len(images)} images and {len(labels)} labels."
    )
  if pgd is not None:
    empirical.check_pgd_settings(pgd)
  extra = sorted(set(pgd_norms) - set(radii))
  if extra:
    raise ValueError(
      f"pgd_norms {extra} have no radius in radii {sorted(radii)}."
    )


def _add_time(
  totals: dict[str, float],
  points: int,
  rows: int,
  compile_seconds: float,
  run_seconds: float,
) -> None:
  """Accumulates one measurement into a timing entry (see `report`)."""
  totals["points"] += points
  totals["rows"] += rows
  totals["compile_seconds"] += compile_seconds
  totals["seconds"] += run_seconds


def _new_time() -> dict[str, float]:
  return dict(points=0, rows=0, compile_seconds=0.0, seconds=0.0)


def _stage_names(
  method_index: np.ndarray, methods: Sequence[str]
) -> np.ndarray:
  names = np.asarray(list(methods) + [report.STAGE_NONE])
  return names[np.where(method_index >= 0, method_index, len(methods))]


def _progress(
  done: int, total: int, correct, certified, robust, elapsed: float
) -> str:
  """One log line with the running accuracies."""
  parts = [f"[{done}/{total}] clean {np.mean(np.concatenate(correct)):.2%}"]
  for norm in report.ordered_norms(certified):
    part = (
      f"{report.NORM_SYMBOLS[norm]} certified "
      f"{np.mean(np.concatenate(certified[norm])):.2%}"
    )
    if norm in robust:
      part += f" PGD {np.mean(np.concatenate(robust[norm])):.2%}"
    parts.append(part)
  return " | ".join(parts) + f" ({elapsed:.1f}s)"


def _unmask(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """[B] array with ``values`` at the valid rows and zeros (False) elsewhere."""
  full = np.zeros(valid.shape, np.asarray(values).dtype)
  full[valid] = values
  return full


def _searched(found: np.ndarray, searched: np.ndarray, valid: np.ndarray):
  """The valid rows of a [B] radius column, NaN where not searched."""
  return np.where(searched, found, np.nan)[valid]


def _float_columns(margins, certified_radii, pgd_radii) -> dict:
  """The optional float columns of `report.extend_records`, by name."""
  columns = {}
  for prefix, values in (
    (report.MARGIN_LOWER, margins),
    (report.RADIUS_CERTIFIED, certified_radii),
    (report.RADIUS_PGD, pgd_radii),
  ):
    for norm, parts in values.items():
      if parts:
        columns[prefix + norm] = np.concatenate(parts)
  return columns


def evaluate(
  apply_fn: Callable[..., jax.Array],
  variables: PyTree,
  images,
  labels,
  *,
  radii: Mapping[str, float],
  num_classes: int,
  batch_size: int = 500,
  methods: Sequence[str] = cascade.DEFAULT_BOUND_METHODS,
  alpha_steps: int = 20,
  pgd: empirical.PGDSettings | None = empirical.PGDSettings(),
  pgd_norms: Sequence[str] | None = None,
  key: jax.Array | None = None,
  gather: bool = True,
  log: Callable[[str], Any] | None = print,
  keep_margins: bool = False,
  radius_search: radii_module.RadiusSearch | None = None,
  progress_bar: bool = False,
  memory_budget_gb: float | None = None,
  bab_seconds: float = 0.0,
  attack_first: bool = True,
) -> tuple[report.Records, dict[str, Any]]:
  """Certifies and attacks ``images`` for every radius; records and summary.

  Args:
    apply_fn: ``apply_fn(variables, x, train=False) -> logits [B, K]``, or a
      Flax module; models without a ``train`` argument are called without
      it, and a flax.linen.BatchNorm with batch statistics is refused
      (`cure_jax.models.call_adapter`). Pass a stable object such as
      ``model.apply`` or ``model`` (jit caches key on it).
    variables: the model's variables (cast to float32).
    images: [N, ...] test inputs in [0, 1] (numpy or jax).
    labels: [N] integer labels.
    radii: norm -> ε, e.g. ``{'linf': 0.1, 'l2': 0.5, 'l1': 1.0}``.
    num_classes: K.
    batch_size: points per batch (the last one is padded and masked).
    methods: the cascade's bound methods, cheapest first.
    alpha_steps: optimization steps of α-CROWN.
    pgd: the attack (`empirical.PGDSettings`), or None for no attack.
    pgd_norms: norms to attack (default: every norm in ``radii``).
    key: PRNG key of the attack's random starts (default PRNGKey(0); the
      command line's is PRNGKey(config.seed)).
    gather: run later cascade stages on the gathered pending points only.
    log: called with progress lines and the final table (None: silent).
    keep_margins: add ``margin_lower_<n>`` columns: the min margin lower
      bound of the last stage that bounded the point (−inf where none did).
    radius_search: add ``radius_certified_<n>`` (and, for attacked norms
      with ``radius_search.pgd``, ``radius_pgd_<n>``) columns, the largest
      certified (PGD-robust) radius by bisection (`radii`; NaN for points
      past ``radius_search.examples``), and a ``radius_search`` entry to the
      summary. None: no search.
    progress_bar: a progress bar with ETA on stderr, showing the running
      accuracies that ``log`` would otherwise get once per batch.
    memory_budget_gb: memory per bound stage in GiB (None or 0: half the
      memory available); stages over it run in chunks.
    bab_seconds: if > 0, branch and bound (stage "bab") on the points the
      bound stages leave open, up to this many seconds per point and norm;
      the records then gain ``falsified_<n>`` columns.
    attack_first: attack before bounding, and bound no point the attack
      broke (`cascade.certify_batch`'s ``known_falsified``): the same
      certificates in a fraction of α-CROWN's and branch and bound's time.
      With branch and bound, those points count as falsified.

  Returns:
    ``(records, summary)`` as `report.build_records` and `report.summarize`
    make them, ready for `report.write_report`.

  Raises:
    ValueError: for malformed arguments.
    BatchStatisticsError: the model normalizes with batch statistics.
  """
  pgd_norms = report.ordered_norms(
    (radii if pgd_norms is None else pgd_norms) if pgd is not None else ()
  )
  _check_arguments(images, labels, radii, batch_size, pgd, pgd_norms)
  if radius_search is not None:
    radii_module.check_search(radius_search)
    search_methods = tuple(radius_search.methods or methods)
    for norm in radii:
      radii_module.search_end(radius_search, norm, float(radii[norm]))
  apply_fn = adapt_apply(apply_fn)
  norms = report.ordered_norms(radii)
  methods = tuple(methods)
  stage_methods = methods + ((cascade.BAB_STAGE,) if bab_seconds > 0 else ())
  log = log or (lambda line: None)
  key = jax.random.PRNGKey(0) if key is None else key
  variables = cast_floating(variables, jnp.float32)
  num = len(labels)
  batch = min(batch_size, num)
  predictions, correct = [], []
  certified = {n: [] for n in norms}
  stages = {n: [] for n in norms}
  falsified = {n: [] for n in norms}
  robust = {n: [] for n in pgd_norms}
  margins = {n: [] for n in norms}
  certified_radii = {n: [] for n in norms}
  pgd_radii = {n: [] for n in norms}
  search_seconds = 0.0
  times = {
    "certify": {n: {m: _new_time() for m in stage_methods} for n in norms},
    "pgd": {n: _new_time() for n in pgd_norms},
  }
  start_time = time.perf_counter()
  bar = tqdm.tqdm(
    total=num,
    desc="certify",
    unit="point",
    file=sys.stderr,
    disable=not progress_bar,
    dynamic_ncols=True,
  )
  for batch_index, start in enumerate(range(0, num, batch)):
    (x, y), valid = pad_batch(
      (
        np.asarray(images[start : start + batch], np.float32),
        np.asarray(labels[start : start + batch], np.int32),
      ),
      batch,
    )
    prediction = np.asarray(
      cascade.predict(apply_fn, variables, x, num_classes)
    )[valid]
    predictions.append(prediction)
    correct.append(prediction == y[valid])
    batch_key = jax.random.fold_in(key, batch_index)
    for norm_index, norm in enumerate(pgd_norms):
      timed = stage_timing.compile_and_run(
        empirical.pgd_robust_jit,
        (apply_fn, norm, pgd),
        (
          variables,
          x,
          y,
          jnp.float32(radii[norm]),
          jax.random.fold_in(batch_key, norm_index),
        ),
      )
      robust[norm].append(np.asarray(timed.value)[valid])
      _add_time(
        times["pgd"][norm],
        int(valid.sum()),
        batch,
        timed.compile_seconds,
        timed.run_seconds,
      )
    for norm in norms:
      result, stage_reports = cascade.certify_batch(
        apply_fn,
        variables,
        x,
        y,
        norm=norm,
        eps=radii[norm],
        num_classes=num_classes,
        methods=methods,
        alpha_steps=alpha_steps,
        valid=valid,
        gather=gather,
        return_stage_reports=True,
        memory_budget_gb=memory_budget_gb,
        bab_seconds=bab_seconds,
        known_falsified=(
          ~_unmask(robust[norm][-1], valid)
          if attack_first and norm in robust
          else None
        ),
      )
      certified[norm].append(np.asarray(result.certified)[valid])
      if keep_margins:
        margins[norm].append(np.asarray(result.margins_lower)[valid])
      falsified[norm].append(np.asarray(result.falsified)[valid])
      stages[norm].append(
        _stage_names(np.asarray(result.method_index)[valid], stage_methods)
      )
      for stage in stage_reports:
        _add_time(
          times["certify"][norm][stage.method],
          stage.points,
          stage.rows,
          stage.compile_seconds,
          stage.run_seconds,
        )
    if radius_search is not None:
      search_start = time.perf_counter()
      searched = radii_module.searched_rows(radius_search, start, valid)
      for norm_index, norm in enumerate(norms):
        attacked = norm in robust and radius_search.pgd
        if not searched.any():  # past the searched points: NaN columns
          found = (np.zeros(batch), np.zeros(batch) if attacked else None)
        else:
          found = radii_module.search_batch(
            apply_fn,
            variables,
            x,
            y,
            searched,
            norm=norm,
            eps=float(radii[norm]),
            search=radius_search,
            certified_at_eps=_unmask(certified[norm][-1], valid),
            pgd_robust_at_eps=(
              _unmask(robust[norm][-1], valid) if norm in robust else None
            ),
            pgd=pgd if norm in robust else None,
            key=jax.random.fold_in(batch_key, len(pgd_norms) + norm_index),
            num_classes=num_classes,
            methods=search_methods,
            alpha_steps=alpha_steps,
            gather=gather,
          )
        certified_radii[norm].append(_searched(found[0], searched, valid))
        if found[1] is not None:
          pgd_radii[norm].append(_searched(found[1], searched, valid))
      search_seconds += time.perf_counter() - search_start
    line = _progress(
      min(start + batch, num),
      num,
      correct,
      certified,
      robust,
      time.perf_counter() - start_time,
    )
    if progress_bar:
      bar.set_postfix_str(line.partition("] ")[2], refresh=False)
      bar.update(int(valid.sum()))
    else:
      log(line)
  bar.close()

  records = report.build_records(
    labels=np.asarray(labels),
    predictions=np.concatenate(predictions),
    certified={n: np.concatenate(v) for n, v in certified.items()},
    stages={n: np.concatenate(v) for n, v in stages.items()},
    pgd_robust={n: np.concatenate(v) for n, v in robust.items()},
    falsified=(
      {n: np.concatenate(v) for n, v in falsified.items()}
      if bab_seconds > 0
      else None
    ),
  )
  records = report.extend_records(
    records, _float_columns(margins, certified_radii, pgd_radii)
  )
  settings = dict(
    num_classes=num_classes,
    batch_size=batch,
    alpha_steps=alpha_steps,
    gather=gather,
    memory_budget_gb=memory_budget_gb,
    bab_seconds=bab_seconds,
    pgd=None if pgd is None else pgd._asdict(),
    pgd_norms=list(pgd_norms),
    wall_seconds=time.perf_counter() - start_time,
  )
  summary = report.summarize(
    records,
    radii=radii,
    methods=stage_methods,
    timing=times,
    settings=settings,
  )
  if radius_search is not None:
    summary["radius_search"] = dict(
      radii_module.summarize_radii(records, radius_search, radii),
      wall_seconds=search_seconds,  # compilation included
    )
  log(report.format_table(summary))
  return records, summary
