r"""Certifies a checkpoint beyond l_p: adversarial patches and geometry.

  python -m cure_jax.certify.beyond_lp --workdir=/tmp/mnist_cure_max \
      [--config.eval.beyond_lp.examples=200]

(the run's recorded config; ``--config=...`` names another) —

For the first ``config.eval.beyond_lp.examples`` test points and every
threat model of ``config.eval.beyond_lp`` —

* ``patch_<p>`` for p in ``patch_sizes``: a p×p patch with arbitrary values
  at any of the (H − p + 1)(W − p + 1) positions (Chiang et al., 2020);
* one per family in ``families`` (rotation, translation, scaling, shearing,
  brightness_contrast, combined) at the ± magnitudes ``ranges``, the
  parameter box split into ``subintervals[family]`` pieces per parameter —

a point is certified when every region (patch position, parameter sub-box)
certifies by the cascade ``methods`` (IBP → CROWN-IBP); the points left
uncertified are attacked for the empirical upper bound (patch PGD with
``patch_attack_steps`` steps at every position, random starts from
``config.seed``; every transformation of a grid of ``grid_points[family]``
values per parameter). Writes ``workdir/beyond_lp.csv`` (one row per point)
and ``beyond_lp.json`` (the summary, with seconds per point, the config and
its provenance), and prints the table; progress goes to stderr (a bar) and
``workdir/beyond_lp.log``. Always in float32.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cure_jax import cli, log_setup

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Training config of the checkpoint, e.g. "
  "configs/mnist.py:cpu=True,method=cure_max (default: the one the run "
  "recorded in --workdir).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "The run's directory (checkpoints are read "
  "there, beyond_lp.csv/json written there).",
)
_OUTPUT_NAME = flags.DEFINE_string(
  "output_name", "beyond_lp", "File stem of the CSV and JSON reports."
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value
  log_setup.setup(workdir if os.path.isdir(workdir) else None, "beyond_lp")
  # Imported here so that --help answers without initializing JAX.
  import jax  # pylint: disable=g-import-not-at-top

  from cure_jax.certify.beyond_lp import threat_eval as evaluate  # pylint: disable=g-import-not-at-top
  from cure_jax.checkpoint import CheckpointRestoreError  # pylint: disable=g-import-not-at-top
  from cure_jax.data import DataNotFoundError  # pylint: disable=g-import-not-at-top

  # The run's recorded config, or --config's (cpu=auto resolved as in
  # training: the CPU variant without an accelerator).
  config = cli.run_config(flags.FLAGS["config"], workdir, jax.default_backend())
  main_process = jax.process_index() == 0
  logging.info(
    "certifying %s on %s beyond l_p: the newest checkpoint of %s",
    config.method,
    config.dataset.name,
    workdir,
  )
  try:
    summary = evaluate.certify_checkpoint_beyond_lp(
      config, workdir, _OUTPUT_NAME.value, log=None, progress_bar=main_process
    )
  except (
    FileNotFoundError,
    DataNotFoundError,
    CheckpointRestoreError,
    ValueError,
  ) as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
    return 1
  if main_process:
    print(evaluate.format_threat_table(summary), flush=True)
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
