r"""Trains, evaluates and certifies a model described by a config.

  python -m cure_jax.main --config=configs/mnist.py --workdir=/tmp/mnist

Multi-host: start the same command on every host (see ``launch/``);
``jax.distributed`` is initialized first, from the cluster (SLURM, TPU pods)
or from ``--coordinator_address/--num_processes/--process_id``.

Bad input — a mistyped ``--config.<key>``, missing data, a corrupt
checkpoint, a diverged loss — ends the program with exit status 1 and one
message that says what to do, not a traceback.
"""

import importlib.util
import sys
from typing import List, Optional

from absl import app, flags, logging
from ml_collections import config_flags

from cure_jax import settings
from cure_jax.parallel import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, e.g. configs/mnist.py:method=sabr.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, summaries "
                               "and results go; an existing run resumes.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-host only).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Number of processes (multi-host only).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index (multi-host only).")
flags.mark_flags_as_required(["config", "workdir"])

_CONFIG_FLAG = "--config="
_OVERRIDE_PREFIX = "--config."


def load_config_file(spec: str):
  """``get_config(arg)`` of "path/to/config.py[:arg]", as ``--config`` does."""
  path, colon, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("cure_jax_config", path)
  if module_spec is None:
    raise FileNotFoundError(f"cannot load a config file from {path!r}.")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if colon else module.get_config()


def unknown_override(argv: List[str]) -> Optional[str]:
  """The message for the first ``--config.<key>=`` naming no key, or None.

  Args:
    argv: the command line.

  Returns:
    `settings.unknown_key_message` of the first unknown override key, or
    None when the config cannot be loaded or every override key exists.
  """
  specs = [a[len(_CONFIG_FLAG):] for a in argv if a.startswith(_CONFIG_FLAG)]
  if not specs:
    return None
  try:
    config = load_config_file(specs[-1])
  except Exception:  # pylint: disable=broad-exception-caught
    return None  # absl reports a config that does not load.
  for arg in argv:
    if arg.startswith(_OVERRIDE_PREFIX):
      key = arg[len(_OVERRIDE_PREFIX):].partition("=")[0]
      message = settings.unknown_key_message(config, key)
      if message:
        return message
  return None


def parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing; an unknown ``--config.<key>`` is one clear line.

  ml_collections reports an override of a missing key as a bare
  AttributeError deep inside flag parsing (no valid keys listed for nested
  ones); it exits here with `settings.unknown_key_message` instead.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    message = unknown_override(argv)
    if message is None:
      raise
    raise SystemExit(f"FATAL Flags parsing error: {message}") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value)
  # After initialize(): these import JAX backends' users.
  from cure_jax.data import DataNotFoundError  # pylint: disable=g-import-not-at-top
  from cure_jax.train import loop  # pylint: disable=g-import-not-at-top
  from cure_jax.train.checkpoint import CheckpointRestoreError  # pylint: disable=g-import-not-at-top
  try:
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (DataNotFoundError, CheckpointRestoreError,
          loop.NonFiniteLossError) as error:
    # The message says what to do; a traceback would only bury it.
    print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
