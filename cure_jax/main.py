r"""Trains, evaluates and certifies a model described by a config.

  python -m cure_jax.main --config=configs/mnist.py [--workdir=/tmp/mnist]
  cure-train --config=configs/mnist.py             (the installed script)

Without ``--workdir`` the run writes into a fresh folder
``runs/<dataset>-<method>-<YYYYmmdd-HHMMSS>``; with only ``--workdir`` of an
existing run, it resumes that run with the config it recorded. A config
file's default ``cpu=auto`` runs the paper's setting where JAX finds an
accelerator and the file's CPU variant (minutes) where it does not; the
program says which, and logs the backend, the devices, the run folder and an
estimate of the training time before it starts.

Watching it: a progress bar (phase, ETA) on stderr; the log (metrics every
``log_every_steps`` steps) on stderr and in ``<workdir>/train.log``;
TensorBoard summaries in ``<workdir>/tensorboard``. Ctrl-C (or SIGTERM)
checkpoints and exits; the same command resumes.

Multi-host: start the same command on every host (see ``launch/``);
``jax.distributed`` is initialized first, from the cluster (SLURM, TPU pods)
or from ``--coordinator_address/--num_processes/--process_id``.

Bad input — a mistyped ``--config.<key>``, missing data, a corrupt
checkpoint, a diverged loss — ends the program with exit status 1 and one
message that says what to do, not a traceback.
"""

import datetime
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cure_jax import cli, log_setup, run_plan
from cure_jax.parallel import distributed

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Path to a config file, e.g. configs/mnist.py:method=sabr (default with "
  "--workdir of a run: the config it recorded, to resume it).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Where checkpoints, summaries and results go; an existing run resumes. "
  "Default: a fresh runs/<dataset>-<method>-<YYYYmmdd-HHMMSS>.",
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
flags.mark_flags_as_required(["config"])


def _start(config, cpu_variant: bool) -> str:
  """The run folder; logs what the run will do (process 0), also to
  ``<workdir>/train.log``."""
  import jax  # pylint: disable=g-import-not-at-top

  from cure_jax import data  # pylint: disable=g-import-not-at-top

  workdir = _WORKDIR.value
  if workdir is None:
    if jax.process_count() > 1:
      raise app.UsageError(
        "a multi-process run needs --workdir: a folder every process shares."
      )
    workdir = run_plan.default_workdir(
      config.dataset.name, config.method, datetime.datetime.now()
    )
  workdir = os.path.abspath(workdir)  # orbax writes to absolute paths only
  if jax.process_index() == 0:
    log_setup.setup(workdir, "train")
    info = data.dataset_info(config.dataset.name)
    lines = run_plan.start_lines(
      config=config,
      config_arg=config_flags.get_config_filename(flags.FLAGS["config"]),
      backend=jax.default_backend(),
      device_kinds=[d.device_kind for d in jax.devices()],
      workdir=workdir,
      cpu_variant=cpu_variant,
      num_train=info.num_train,
      input_shape=info.input_shape,
    )
    for line in lines:
      logging.info("%s", line)
  return workdir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  log_setup.setup()  # INFO, library chatter kept to warnings
  distributed.initialize(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  )
  # After initialize(): these import JAX backends' users.
  import jax  # pylint: disable=g-import-not-at-top

  from cure_jax.checkpoint import CheckpointRestoreError  # pylint: disable=g-import-not-at-top
  from cure_jax.data import DataNotFoundError  # pylint: disable=g-import-not-at-top
  from cure_jax.train import loop  # pylint: disable=g-import-not-at-top

  config, cpu_spec = cli.config_for_backend(
    flags.FLAGS["config"], jax.default_backend()
  )
  workdir = _start(config, cpu_variant=cpu_spec is not None)
  try:
    results = loop.train_and_evaluate(config, workdir)
  except (
    DataNotFoundError,
    CheckpointRestoreError,
    loop.NonFiniteLossError,
  ) as error:
    # The message says what to do; a traceback would only bury it.
    print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
    return 1
  if "stopped_at_step" not in results and jax.process_index() == 0:
    logging.info("results in %s", os.path.join(workdir, loop.RESULTS_FILE))
  return 0


def run():
  """The ``cure-train`` script: `main` with the config's clear flag errors."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
