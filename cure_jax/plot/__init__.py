"""Certified and PGD accuracy against ε, from certification runs.

  python -m cure_jax.plot RUN_DIR... [--out fig.png] [--tensorboard]

reads each run's ``certify.csv`` (with the radius columns of ``python -m
cure_jax.certify`` or ``certify.evaluate(..., radius_search=RadiusSearch())``
the whole curve, otherwise the evaluation radius only) and draws one panel per
norm; see `curve_figure`. In Python::

  runs = [read_run(d) for d in run_dirs]
  save_figure(draw_figure(runs), "curves.pdf")
  log_curves(runs[0], "runs/a/tensorboard/curves")
"""

from cure_jax.plot.accuracy_curves import NormCurves, accuracy_at, norm_curves
from cure_jax.plot.curve_figure import draw_figure, output_paths, save_figure
from cure_jax.plot.provenance import code_version, machine
from cure_jax.plot.run_results import (
  RunResults,
  hyperparameters,
  metrics,
  read_run,
)
from cure_jax.plot.tensorboard_curves import log_curves

__all__ = (
  "NormCurves",
  "RunResults",
  "accuracy_at",
  "code_version",
  "draw_figure",
  "hyperparameters",
  "log_curves",
  "machine",
  "metrics",
  "norm_curves",
  "output_paths",
  "read_run",
  "save_figure",
)
