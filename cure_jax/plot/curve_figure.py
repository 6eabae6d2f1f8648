"""The accuracy-against-ε figure: one panel per norm, several runs.

Certified accuracy is drawn solid and PGD-robust accuracy dashed, one color
per run (labelled with its method name, and with the number of points the
curves are over when the radius search covered only the first ones); a dotted
vertical line marks each evaluation radius, with the accuracies measured
there on every point as a filled (certified) and an open (PGD) marker. The
footer names the code version and the machine.
Drawn with matplotlib's Agg canvas, without pyplot: no display, no global
backend switch.
"""

import os
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cure_jax.certify.report import NORM_SYMBOLS, format_radius
from cure_jax.plot import accuracy_curves, provenance
from cure_jax.plot.run_results import RunResults
from cure_jax.types import NORMS

FORMATS = ("png", "pdf")


def _draw_run(axes, curves: accuracy_curves.NormCurves, color, label):
  if curves.eps is not None:
    axes.plot(curves.eps, curves.certified, color=color, label=label)
    if curves.pgd is not None:
      axes.plot(curves.eps, curves.pgd, color=color, linestyle="--")
  if curves.eval_radius is None:
    return
  axes.plot(curves.eval_radius, curves.eval_certified, "o", color=color)
  if curves.eval_pgd is not None:
    axes.plot(
      curves.eval_radius,
      curves.eval_pgd,
      "o",
      markerfacecolor="none",
      color=color,
    )


def _run_label(run: RunResults) -> str:
  """The method name, and "curves: first k of n points" for a partial search."""
  counts = [
    (int(rows.sum()), len(rows))
    for rows in (accuracy_curves.searched(run.records, n) for n in NORMS)
    if rows is not None
  ]
  if counts and counts[0][0] < counts[0][1]:
    return f"{run.name} (curves: first {counts[0][0]} of {counts[0][1]} points)"
  return run.name


def _footer() -> str:
  return f"{provenance.code_version()} · {provenance.machine()}"


def draw_figure(runs: Sequence[RunResults], points: int = 256) -> Figure:
  """The figure of ``runs`` (see the module docstring).

  Args:
    runs: runs from `run_results.read_run`.
    points: radii per curve.

  Returns:
    A matplotlib `Figure` on an Agg canvas.

  Raises:
    ValueError: no runs, or no certified norm among them.
  """
  if not runs:
    raise ValueError("no runs to plot: pass at least one run folder.")
  norms = [n for n in NORMS if any(f"certified_{n}" in r.records for r in runs)]
  if not norms:
    raise ValueError("the runs' records have no certified_<norm> column.")
  figure = Figure(figsize=(4.2 * len(norms), 3.8), layout="constrained")
  FigureCanvasAgg(figure)
  panels = figure.subplots(1, len(norms), squeeze=False)[0]
  colors = [f"C{i % 10}" for i in range(len(runs))]
  for axes, norm in zip(panels, norms):
    eval_radii = set()
    for run, color in zip(runs, colors):
      if f"certified_{norm}" not in run.records:
        continue
      curves = accuracy_curves.norm_curves(
        run.records, run.summary, norm, points
      )
      _draw_run(axes, curves, color, _run_label(run))
      if curves.eval_radius is not None:
        eval_radii.add(curves.eval_radius)
    for eps in sorted(eval_radii):
      axes.axvline(eps, color="0.6", linestyle=":", linewidth=1)
    axes.set_title(
      f"{NORM_SYMBOLS[norm]}"
      + (
        f" (evaluated at ε = {', '.join(map(format_radius, sorted(eval_radii)))})"
        if eval_radii
        else ""
      ),
      fontsize=10,
    )
    axes.set_xlabel(f"radius ε ({NORM_SYMBOLS[norm]})")
    axes.set_ylim(0, 1.02)
    axes.set_xlim(left=0)
    axes.grid(alpha=0.3)
  panels[0].set_ylabel("accuracy")
  handles = [
    Line2D([], [], color=c, label=_run_label(r)) for r, c in zip(runs, colors)
  ] + [
    Line2D([], [], color="k", label="certified"),
    Line2D([], [], color="k", linestyle="--", label="PGD"),
  ]
  panels[0].legend(handles=handles, fontsize=8, loc="lower left")
  figure.supxlabel(_footer(), fontsize=7, color="0.35")
  return figure


def output_paths(out: str) -> list[str]:
  """``out`` if it ends in .png or .pdf, else ``out``.png and ``out``.pdf."""
  stem, suffix = os.path.splitext(out)
  if suffix.lstrip(".").lower() in FORMATS:
    return [out]
  return [f"{out}.{fmt}" for fmt in FORMATS]


def save_figure(figure: Figure, out: str, dpi: int = 150) -> list[str]:
  """Writes the figure to the paths of `output_paths`; returns them."""
  paths = output_paths(out)
  software = _footer()
  for path in paths:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    is_pdf = path.lower().endswith(".pdf")
    figure.savefig(
      path,
      dpi=dpi,
      metadata={"Creator": software} if is_pdf else {"Software": software},
    )
  return paths
