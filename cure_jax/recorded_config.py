"""A config file that returns the config a run folder recorded.

  --config=<path of this file>:<workdir>

`cli.parse_flags` puts this ``--config`` on a command line that names a
``--workdir`` but no ``--config``, so ``--config.<key>=value`` overrides
apply to a run's recorded config (``<workdir>/config.json``) exactly as to a
config file's: ml_collections parses each value by the recorded key's type.
Like the config files it imports no JAX.
"""

import copy

import ml_collections

from cure_jax import config_schema
from cure_jax import workdir as workdir_lib


def _add_missing_keys(
  recorded: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict
) -> None:
  """Gives ``recorded`` (unlocked) every key of ``defaults`` it lacks, with
  its default value: options added to the library after a run was recorded
  keep their defaults and can be overridden; recorded values stay."""
  for key, default in defaults.items():
    if key not in recorded:
      recorded[key] = copy.deepcopy(default)
    elif isinstance(default, ml_collections.ConfigDict) and isinstance(
      recorded[key], ml_collections.ConfigDict
    ):
      _add_missing_keys(recorded[key], default)


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """``workdir``'s recorded config, locked, with the defaults of any keys
  added to the library since it was recorded.

  Its ``cpu=auto`` choice was made when the run started, so ``auto_cpu`` is
  off: a run trained on an accelerator is certified with its own config on
  any machine.

  Raises:
    WorkdirError: ``workdir`` holds no ``config.json``.
  """
  config = workdir_lib.read_config(workdir)
  config.unlock()
  _add_missing_keys(config, config_schema.base_config())
  config.auto_cpu = False
  config.lock()
  return config
