r"""Certifies a trained checkpoint: per-sample l∞ / l2 / l1 flags and PGD.

  python -m cure_jax.certify --config=configs/mnist.py:cpu=True,method=cure_max \
      --workdir=/tmp/mnist_cure_max [--config.eval.certify_examples=1000]

Restores the newest checkpoint in ``workdir`` (trained with the same
config), takes the first ``config.eval.certify_examples`` test points (the
paper's 1000), certifies each at the setting's radii (``config.eval.eps_*``
for ``config.eval.norms``) by the cascade ``config.eval.methods`` (IBP →
CROWN → α-CROWN, stopping at the first stage that certifies; each stage in
chunks that fit ``config.eval.memory_budget_gb``; then, when
``config.eval.bab_seconds`` > 0, branch and bound on the rest), attacks each
with PGD (``config.eval.pgd_steps`` × ``pgd_restarts``, margin loss) for
the empirical upper bound, and writes ``workdir/certify.csv`` (one row per
point) and ``workdir/certify.json`` (the summary, with seconds per point per
stage), printing the table. Always in float32, whatever the training
precision.
"""

import os
import sys
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from cure_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Training config of the checkpoint, e.g. "
  "configs/mnist.py:cpu=True,method=sabr.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "The run's directory (checkpoints are read "
  "there, certify.csv/json written there).",
)
_OUTPUT_NAME = flags.DEFINE_string(
  "output_name", "certify", "File stem of the CSV and JSON reports."
)
flags.mark_flags_as_required(["config", "workdir"])

NORM_RADIUS_KEYS = {"linf": "eps_linf", "l2": "eps_l2", "l1": "eps_l1"}


def certify_checkpoint(
  config, workdir: str, output_name: str = "certify", log=print
) -> dict[str, Any]:
  """Certifies the newest checkpoint of ``workdir``; returns the summary.

  Args:
    config: the config the checkpoint was trained with.
    workdir: the run's directory.
    output_name: file stem of the reports written into ``workdir``.
    log: progress and table output (None: silent).

  Returns:
    The summary (also in ``workdir/<output_name>.json``).

  Raises:
    FileNotFoundError: ``workdir`` has no checkpoint.
    DataNotFoundError: the test split is not available.
  """
  # Imported here so that --help answers without initializing JAX.
  import numpy as np  # pylint: disable=g-import-not-at-top

  from cure_jax import certify, data  # pylint: disable=g-import-not-at-top
  from cure_jax.train import loop  # pylint: disable=g-import-not-at-top

  model, variables = loop.restore_for_eval(config, workdir)
  info = data.dataset_info(config.dataset.name)
  test = loop.load_config_split(config, "test")
  if config.eval.certify_examples:
    test = test.take(min(config.eval.certify_examples, test.num_examples))
  images = data.to_unit_float(test.images)
  if info.eval_crop:
    images = data.center_crop(images, info.eval_crop)
  radii = {
    n: float(config.eval[NORM_RADIUS_KEYS[n]]) for n in config.eval.norms
  }
  pgd = certify.PGDSettings(
    steps=config.eval.pgd_steps, restarts=config.eval.pgd_restarts
  )
  records, summary = certify.evaluate(
    model.apply,
    variables,
    np.asarray(images),
    test.labels,
    radii=radii,
    num_classes=config.model.num_classes,
    batch_size=config.eval.certify_batch_size,
    methods=tuple(config.eval.methods),
    alpha_steps=config.eval.alpha_steps,
    pgd=pgd,
    memory_budget_gb=config.eval.get("memory_budget_gb", 0.0),
    bab_seconds=config.eval.get("bab_seconds", 0.0),
    log=log,
  )
  summary = dict(
    summary,
    method=config.method,
    dataset=info.name,
    workdir=os.path.abspath(workdir),
  )
  certify.write_report(workdir, records, summary, name=output_name)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from cure_jax.data import DataNotFoundError  # pylint: disable=g-import-not-at-top
  from cure_jax.train.checkpoint import CheckpointRestoreError  # pylint: disable=g-import-not-at-top

  try:
    certify_checkpoint(_CONFIG.value, _WORKDIR.value, _OUTPUT_NAME.value)
  except (
    FileNotFoundError,
    DataNotFoundError,
    CheckpointRestoreError,
  ) as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
