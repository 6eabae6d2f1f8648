r"""Plots certified and PGD accuracy against ε for certification runs.

  python -m cure_jax.plot /tmp/mnist_sabr /tmp/mnist_cure_max \
      [--out curves.png] [--name certify] [--points 256] [--tensorboard]

Each argument is a run folder holding ``certify.csv`` (``python -m
cure_jax.certify``: its radius search draws the curves; a run certified with
``--noradius_search`` shows the evaluation radius only). ``--out`` ending in
.png or .pdf writes that format, any other path both (default
``<first run>/accuracy_curves``). ``--tensorboard`` also logs each run's curves,
figure and hparams under ``<run>/tensorboard/curves``.
"""

import argparse
import os
import sys
from collections.abc import Sequence

from cure_jax.plot import curve_figure, run_results, tensorboard_curves


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m cure_jax.plot",
    description="Certified (solid) and PGD (dashed) accuracy against ε.",
  )
  parser.add_argument("runs", nargs="+", help="run folders with certify.csv")
  parser.add_argument(
    "--out",
    default=None,
    help="figure path; .png or .pdf, else both (default: "
    "<first run>/accuracy_curves)",
  )
  parser.add_argument("--name", default="certify", help="reports' file stem")
  parser.add_argument("--points", type=int, default=256, help="radii per curve")
  parser.add_argument(
    "--tensorboard",
    action="store_true",
    help="also log each run to <run>/tensorboard/curves",
  )
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    runs = [run_results.read_run(d, args.name) for d in args.runs]
  except FileNotFoundError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  out = args.out or os.path.join(args.runs[0], "accuracy_curves")
  figure = curve_figure.draw_figure(runs, points=args.points)
  for path in curve_figure.save_figure(figure, out):
    print(f"wrote {path}")
  if args.tensorboard:
    for run in runs:
      logdir = os.path.join(run.path, "tensorboard", "curves")
      print(f"wrote {tensorboard_curves.log_curves(run, logdir)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
