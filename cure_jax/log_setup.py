"""Logging for the command-line tools: absl to the console and a run's log file.

Messages go through absl logging at INFO. Libraries that log every routine
step at INFO (orbax on each save, JAX's compilation cache) are kept to
WARNING and above, so the console shows the run, not its plumbing.
"""

import logging as std_logging
import os

from absl import logging

_QUIET_LIBRARIES = ("orbax", "etils", "jax/_src", "tensorflow_datasets")
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _QuietLibraries(std_logging.Filter):
  """Drops records below WARNING that come from the chatty libraries."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    path = record.pathname.replace(os.sep, "/")
    return not any(f"/{name}" in path for name in _QUIET_LIBRARIES)


def setup(workdir: str | None = None, name: str = "train") -> str | None:
  """Logs INFO and above to stderr and, given a workdir, to ``<name>.log``.

  Idempotent: a second call adds no second file handler for the same file.

  Returns:
    The log file's path, or None without a workdir.
  """
  logging.set_verbosity(logging.INFO)
  logger = std_logging.getLogger("absl")
  for handler in logger.handlers + [logging.get_absl_handler()]:
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
      handler.addFilter(_QuietLibraries())
  if workdir is None:
    return None
  os.makedirs(workdir, exist_ok=True)
  path = os.path.abspath(os.path.join(workdir, f"{name}.log"))
  for handler in logger.handlers:
    if getattr(handler, "baseFilename", None) == path:
      return path
  file_handler = std_logging.FileHandler(path)
  file_handler.setFormatter(std_logging.Formatter(_FORMAT))
  file_handler.addFilter(_QuietLibraries())
  logger.addHandler(file_handler)
  return path
