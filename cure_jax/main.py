r"""Trains, evaluates and certifies a model described by a config.

  python -m cure_jax.main --config=configs/mnist.py --workdir=/tmp/mnist

Multi-host: start the same command on every host (see ``launch/``);
``jax.distributed`` is initialized first, from the cluster (SLURM, TPU pods)
or from ``--coordinator_address/--num_processes/--process_id``.

Bad input — a mistyped ``--config.<key>``, missing data, a corrupt
checkpoint, a diverged loss — ends the program with exit status 1 and one
message that says what to do, not a traceback.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cure_jax import cli
from cure_jax.parallel import distributed

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Path to a config file, e.g. configs/mnist.py:method=sabr.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Where checkpoints, summaries and results go; an existing run resumes.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 (multi-host only)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Number of processes (multi-host only)."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "This process's index (multi-host only)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  distributed.initialize(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  )
  # After initialize(): these import JAX backends' users.
  from cure_jax.checkpoint import CheckpointRestoreError  # pylint: disable=g-import-not-at-top
  from cure_jax.data import DataNotFoundError  # pylint: disable=g-import-not-at-top
  from cure_jax.train import loop  # pylint: disable=g-import-not-at-top

  try:
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (
    DataNotFoundError,
    CheckpointRestoreError,
    loop.NonFiniteLossError,
  ) as error:
    # The message says what to do; a traceback would only bury it.
    print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
