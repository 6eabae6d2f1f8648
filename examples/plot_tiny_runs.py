r"""Two certification runs compared in one accuracy-against-ε figure.

  python -m examples.plot_tiny_runs [--size tiny] [--out /tmp/curves]

Trains the custom model of `certify_custom_model` with cross-entropy and
with the IBP loss of `train_custom_model_ibp`, certifies each test set with
`cure_jax.certify.evaluate(..., radius_search=RadiusSearch())` into a run
folder (certify.csv with every point's certified and PGD radius, certify.json
with the method name), then draws both with `python -m cure_jax.plot`:
certified accuracy solid, PGD dashed, one panel per norm.
"""

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import jax

from cure_jax import certify
from cure_jax.plot.__main__ import main as plot_main
from examples import certify_custom_model, train_custom_model_ibp
from examples.certify_custom_model import NUM_CLASSES, RADII, CustomCNN
from examples.synthetic_images import make_images


def certify_run(run_dir, method, variables, images, labels, size) -> str:
  """Certifies with radius search and writes the run's reports."""
  records, summary = certify.evaluate(
    CustomCNN(),
    variables,
    images,
    labels,
    radii={n: RADII[n] for n in size["norms"]},
    num_classes=NUM_CLASSES,
    methods=size["methods"],
    pgd=certify.PGDSettings(steps=size["pgd"], restarts=1),
    gather=size["gather"],
    radius_search=certify.RadiusSearch(
      eps_max={"linf": 0.2, "l2": 1.0},
      relative_tolerance=size["tolerance"],
    ),
    log=None,
  )
  certify.write_report(run_dir, records, dict(summary, method=method))
  return run_dir


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m examples.plot_tiny_runs")
  parser.add_argument(
    "--size", choices=sorted(certify_custom_model.SIZES), default="default"
  )
  parser.add_argument("--out", default=None, help="folder of runs and figure")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains, certifies and plots; returns the run folders and figure paths."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  size = certify_custom_model.SIZES[args.size]
  ibp_size = train_custom_model_ibp.SIZES[args.size]
  out = args.out or tempfile.mkdtemp(prefix="cure_jax_curves_")
  keys = jax.random.split(jax.random.PRNGKey(args.seed), 3)
  train_x, train_y = make_images(keys[0], size["train"])
  test_x, test_y = make_images(keys[1], size["test"])
  model = CustomCNN()
  standard = certify_custom_model.train_standard(
    model, train_x, train_y, size["steps"], keys[2]
  )
  ibp, _ = train_custom_model_ibp.train_ibp(
    model, train_x, train_y, ibp_size["steps"], ibp_size["batch"], keys[2]
  )
  runs = [
    certify_run(os.path.join(out, name), name, variables, test_x, test_y, size)
    for name, variables in (("standard", standard), ("ibp", ibp))
  ]
  figure = os.path.join(out, "accuracy_curves")
  plot_main(runs + ["--out", figure])
  return {"runs": runs, "figures": [f"{figure}.png", f"{figure}.pdf"]}


if __name__ == "__main__":
  main()
