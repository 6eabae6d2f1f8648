"""A config file that returns the config a run folder recorded.

  --config=<path of this file>:<workdir>

`cli.parse_flags` puts this ``--config`` on a command line that names a
``--workdir`` but no ``--config``, so ``--config.<key>=value`` overrides
apply to a run's recorded config (``<workdir>/config.json``) exactly as to a
config file's: ml_collections parses each value by the recorded key's type.
Like the config files it imports no JAX.
"""

import ml_collections

from cure_jax import workdir as workdir_lib


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """``workdir``'s recorded config, locked.

  Its ``cpu=auto`` choice was made when the run started, so ``auto_cpu`` is
  off: a run trained on an accelerator is certified with its own config on
  any machine.

  Raises:
    WorkdirError: ``workdir`` holds no ``config.json``.
  """
  config = workdir_lib.read_config(workdir)
  config.unlock()
  config.auto_cpu = False
  config.lock()
  return config
