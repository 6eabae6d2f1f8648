"""Accuracy against ε from a certification run's per-point records.

With radius columns (``radius_certified_<n>``, ``radius_pgd_<n>``, written by
``evaluate(..., radius_search=...)`` and by ``python -m cure_jax.certify``), a
point is certified (PGD-robust) at ε when it is correctly classified and its
radius is ≥ ε, so one run gives the whole curve on [0, eps_max) (the search
says nothing beyond). The curves are over the searched points, those with a
radius (the search may cover the first N points only: NaN elsewhere).
Without radius columns only the evaluation radius has a value, from the
``certified_<n>`` and ``pgd_<n>`` flags.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from cure_jax.certify import report
from cure_jax.types import NORMS


class NormCurves(NamedTuple):
  """Accuracy against ε for one norm of one run (fractions in [0, 1]).

  Attributes:
    eps: [G] radii, from 0 to the search's reach; None without radius
      columns.
    certified: [G] certified accuracy at ``eps``, or None.
    pgd: [G] PGD-robust accuracy at ``eps``, or None (no PGD radii).
    eval_radius: the evaluation radius, or None when unknown.
    eval_certified: certified accuracy at the evaluation radius.
    eval_pgd: PGD-robust accuracy there, or None (not attacked).
    curve_points: the points the curves are over (the searched ones), or
      None without radius columns.
    points: all points of the run (the evaluation radius's accuracies are
      over them).
  """

  eps: np.ndarray | None
  certified: np.ndarray | None
  pgd: np.ndarray | None
  eval_radius: float | None
  eval_certified: float
  eval_pgd: float | None
  curve_points: int | None = None
  points: int = 0


def accuracy_at(radii: np.ndarray, correct: np.ndarray, eps: np.ndarray):
  """[G] fraction of points correct with radius ≥ each ε of ``eps``."""
  holds = np.asarray(correct, bool)[:, None] & (
    np.asarray(radii)[:, None] >= np.asarray(eps)[None, :]
  )
  return holds.mean(axis=0)


def _curve_end(records, summary: Mapping[str, Any], norm: str) -> float:
  """Where the curve stops: eps_max · (1 − relative tolerance), the largest
  radius the search can return (points that reach it are certified at least
  that far); without the search's settings, the largest radius found."""
  search = summary.get("radius_search", {})
  end = search.get("eps_max", {}).get(norm)
  if end is not None:
    return float(end) * (1 - float(search.get("relative_tolerance", 0.0)))
  columns = [
    records[p + norm]
    for p in (report.RADIUS_CERTIFIED, report.RADIUS_PGD)
    if p + norm in records
  ]
  return float(max(np.nanmax(c) for c in columns))


def searched(records: report.Records, norm: str) -> np.ndarray | None:
  """[N] bool: the points with a searched radius for ``norm`` (None when the
  run has no radius columns for it)."""
  column = records.get(report.RADIUS_CERTIFIED + norm)
  return None if column is None else np.isfinite(column)


def norm_curves(
  records: report.Records,
  summary: Mapping[str, Any],
  norm: str,
  points: int = 256,
) -> NormCurves:
  """The curves of ``norm`` on ``points`` radii evenly spaced from 0 to the
  search's reach (`_curve_end`).

  Args:
    records: the run's records (`report.read_csv`).
    summary: its summary (`report.read_json`), or {} if there is none.
    norm: a norm with a ``certified_<norm>`` column.
    points: G, the number of radii.

  Returns:
    `NormCurves`.
  """
  correct = np.asarray(records["correct"], bool)
  eval_radius = summary.get("radii", {}).get(norm)
  flags = records.get(f"pgd_{norm}")
  eps = certified = pgd = None
  rows = searched(records, norm)
  if rows is not None and rows.any():
    end = _curve_end(records, summary, norm)
    eps = np.linspace(0.0, end, points)
    certified = accuracy_at(
      records[report.RADIUS_CERTIFIED + norm][rows], correct[rows], eps
    )
    if report.RADIUS_PGD + norm in records:
      pgd = accuracy_at(
        records[report.RADIUS_PGD + norm][rows], correct[rows], eps
      )
  return NormCurves(
    eps=eps,
    certified=certified,
    pgd=pgd,
    eval_radius=None if eval_radius is None else float(eval_radius),
    eval_certified=float(np.mean(records[f"certified_{norm}"])),
    eval_pgd=None if flags is None else float(np.mean(flags)),
    curve_points=None if eps is None else int(rows.sum()),
    points=len(correct),
  )


def run_norms(records: report.Records) -> tuple[str, ...]:
  """The norms a run certified, in the order linf, l2, l1."""
  return tuple(n for n in NORMS if f"certified_{n}" in records)
