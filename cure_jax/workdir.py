"""A run folder that describes itself, and loading a trained model from it.

At start a run writes ``config.json`` (the whole config) and ``run.json``
(package versions, git revision, backend, devices, seed, command line), so
``certify``, ``plot`` and ``export`` need only ``--workdir``, and every
results file can say what produced it (`describe`). `load` gives back the
trained model::

  model, variables, config = cure_jax.load("runs/mnist-sabr-20260101-120000")
  logits = model.apply(variables, images, train=False)

JAX is imported only by the functions that need it (`provenance`, `load`).
"""

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from typing import Any

import ml_collections

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
PACKAGES = (
  "cure_jax",
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "orbax-checkpoint",
  "tensorflow-datasets",
  "numpy",
)


class WorkdirError(FileNotFoundError):
  """A workdir lacks what a command needs; the message says what to do."""


def package_versions() -> dict[str, str | None]:
  """Installed version of each package in `PACKAGES` (None if missing)."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def _git(checkout: str, *args: str) -> str:
  """The stripped output of ``git -C checkout args...`` (raises on failure)."""
  return subprocess.run(
    ["git", "-C", checkout, *args],
    capture_output=True,
    text=True,
    timeout=5,
    check=True,
  ).stdout.strip()


def git_revision() -> str | None:
  """The checkout's commit (with "+dirty" for local changes), or None."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    rev = _git(here, "rev-parse", "--short=12", "HEAD")
    dirty = _git(here, "status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.SubprocessError):
    return None
  return rev + ("+dirty" if dirty else "") if rev else None


def provenance() -> dict[str, Any]:
  """Versions, revision, machine and devices: what produced a result."""
  import jax  # pylint: disable=g-import-not-at-top

  return {
    "versions": package_versions(),
    "git_revision": git_revision(),
    "python": sys.version.split()[0],
    "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "process_count": jax.process_count(),
  }


def describe(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``{"config": ..., "provenance": ...}`` for a results file, JSON-ready
  (tuples as lists, as they read back)."""
  return json.loads(
    json.dumps(
      {"config": config.to_dict(), "provenance": provenance()}, default=str
    )
  )


def write_run_record(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes ``config.json`` and ``run.json`` into ``workdir`` (atomically).

  A resumed run writes both again: ``run.json`` describes its latest start.
  """
  os.makedirs(workdir, exist_ok=True)
  record = {
    **provenance(),
    "seed": config.get("seed"),
    "command": sys.argv,
    "started": datetime.datetime.now(datetime.UTC).isoformat(
      timespec="seconds"
    ),
  }
  _write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
  _write_json(os.path.join(workdir, RUN_FILE), record)


def _write_json(path: str, value: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def _tuples(value: Any) -> Any:
  """JSON's lists back to the tuples the configs use."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The locked config a run in ``workdir`` was started with.

  Raises:
    WorkdirError: no ``config.json`` there (not a run folder, or a run
      started before runs recorded their config: pass ``--config`` then).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise WorkdirError(
      f"{path} does not exist: {workdir!r} is not a run folder written by "
      "`python -m cure_jax.main`. Pass the run's --config=... explicitly, or "
      "point --workdir at a run folder."
    )
  with open(path) as f:
    config = ml_collections.ConfigDict(_tuples(json.load(f)))
  config.lock()
  return config


def read_run_record(workdir: str) -> dict[str, Any]:
  """``run.json`` of ``workdir``, or {} if the run did not write one."""
  path = os.path.join(workdir, RUN_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def load(workdir: str):
  """The trained model of the run in ``workdir``: (model, variables, config).

  The model is built from the run's recorded config (`read_config`) and the
  variables (``{"params", "batch_stats"}``) come from its newest checkpoint,
  read without the optimizer state.

  Raises:
    WorkdirError: ``workdir`` holds no ``config.json``.
    NoCheckpointError, CheckpointRestoreError: no checkpoint there, or one
      that cannot be restored (`cure_jax.checkpoint.restore_variables`).
  """
  from cure_jax.checkpoint import restore_for_eval  # pylint: disable=g-import-not-at-top

  config = read_config(workdir)
  model, variables = restore_for_eval(config, os.path.abspath(workdir))
  return model, variables, config
