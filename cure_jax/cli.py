"""Command-line parsing shared by the programs (train, certify, export).

A command line that names a run's ``--workdir`` but no ``--config`` uses the
config the run recorded (``<workdir>/config.json``, `recorded_config`), with
any ``--config.<key>=value`` overrides on top.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from cure_jax import config_schema, recorded_config
from cure_jax import workdir as workdir_lib

_CONFIG_FLAG = "--config="
_OVERRIDE_PREFIX = "--config."
_RECORDED_CONFIG_FILE = os.path.abspath(recorded_config.__file__)


def unknown_override(argv: list[str]) -> str | None:
  """The message for the first ``--config.<key>=`` naming no key, or None.

  ml_collections raises on an unknown override key inside its flag's parser,
  before the flag holds the config it loaded, so the config is loaded here a
  second time, and only on that error path. That is cheap: config files
  import only `cure_jax.config_schema` (ml_collections and the standard
  library, no JAX), so it takes milliseconds.

  Args:
    argv: the command line.

  Returns:
    `config_schema.unknown_key_message` of the first unknown override key,
    or None when the config cannot be loaded or every override key exists.
  """
  specs = [a[len(_CONFIG_FLAG) :] for a in argv if a.startswith(_CONFIG_FLAG)]
  if not specs:
    return None
  try:
    config = config_schema.load_config(specs[-1])
  except Exception:  # pylint: disable=broad-exception-caught
    return None  # absl reports a config that does not load.
  for arg in argv:
    if arg.startswith(_OVERRIDE_PREFIX):
      key = arg[len(_OVERRIDE_PREFIX) :].partition("=")[0]
      message = config_schema.unknown_key_message(config, key)
      if message:
        return message
  return None


def _flag_value(argv: list[str], name: str) -> str | None:
  """The last value of ``--name=value`` or ``--name value`` in ``argv``."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    for dashes in ("-", "--"):
      if arg.startswith(f"{dashes}{name}="):
        value = arg.split("=", 1)[1]
      elif arg == f"{dashes}{name}" and i + 1 < len(argv):
        value = argv[i + 1]
  return value


def _names_config(argv: list[str]) -> bool:
  return any(
    a in ("-config", "--config") or a.startswith(("-config=", _CONFIG_FLAG))
    for a in argv[1:]
  )


def with_recorded_config(argv: list[str]) -> list[str]:
  """``argv``, with the run's recorded config where it names no ``--config``.

  Args:
    argv: a command line (program name first).

  Returns:
    ``argv`` itself when it names ``--config`` or no ``--workdir``; else
    ``argv`` with ``--config=<recorded_config.py>:<workdir>`` after the
    program name (before any ``--config.<key>`` override, as ml_collections
    requires).

  Raises:
    WorkdirError: the ``--workdir`` holds no ``config.json``; the message
      says to pass ``--config``.
  """
  workdir = _flag_value(argv, "workdir")
  if workdir is None or _names_config(argv):
    return argv
  workdir_lib.read_config(workdir)  # raises, saying what to do
  return [
    argv[0],
    f"{_CONFIG_FLAG}{_RECORDED_CONFIG_FILE}:{workdir}",
    *argv[1:],
  ]


def config_is_recorded(config_flag: flags.Flag) -> bool:
  """Whether the parsed ``--config`` is a run's recorded config."""
  path = config_flags.get_config_filename(config_flag).partition(":")[0]
  return os.path.abspath(path) == _RECORDED_CONFIG_FILE


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; an unknown ``--config.<key>`` is one clear line.

  ml_collections reports an override of a missing key as a bare
  AttributeError deep inside flag parsing (no valid keys listed for nested
  ones); it exits here with `config_schema.unknown_key_message` instead.
  Without ``--config``, the ``--workdir``'s recorded config is the config
  (`with_recorded_config`).
  """
  try:
    argv = with_recorded_config(argv)
  except workdir_lib.WorkdirError as error:
    raise SystemExit(f"FATAL Flags parsing error: {error}") from None
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    message = unknown_override(argv)
    if message is None:
      raise
    raise SystemExit(f"FATAL Flags parsing error: {message}") from None


def config_for_backend(config_flag: flags.Flag, backend: str):
  """The run's config once JAX is up: ``cpu=auto`` resolved for ``backend``.

  A config file's default ``cpu=auto`` gives the paper's setting; with no
  accelerator the run takes the file's CPU variant instead, loaded with the
  same ``--config.<key>`` overrides (`config_schema.cpu_variant_spec`).

  Args:
    config_flag: the parsed ``--config`` flag, ``flags.FLAGS["config"]``.
    backend: ``jax.default_backend()``.

  Returns:
    (config, the ``--config`` value loaded in place of the given one, or None
    when the flag's config stands).
  """
  spec = config_schema.cpu_variant_spec(
    config_flags.get_config_filename(config_flag),
    config_flag.value.auto_cpu,
    backend,
  )
  if spec is None:
    return config_flag.value, None
  overrides = config_flags.get_override_values(config_flag)
  return config_schema.load_config(spec, overrides), spec


def _flat(value, prefix: str = "") -> dict:
  """Nested dicts as {"a.b": leaf}; lists as tuples (JSON's round trip)."""
  if isinstance(value, dict):
    flat = {}
    for key, item in value.items():
      flat.update(_flat(item, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tuple(value) if isinstance(value, list) else value}


def differing_keys(config, workdir: str) -> list[str]:
  """Dotted keys whose value in ``config`` differs from ``workdir``'s
  recorded config ([] where the run recorded none)."""
  try:
    recorded = workdir_lib.read_config(workdir)
  except workdir_lib.WorkdirError:
    return []
  ours, theirs = _flat(config.to_dict()), _flat(recorded.to_dict())
  return sorted(
    k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)
  )


def run_config(config_flag: flags.Flag, workdir: str, backend: str):
  """The config of a command on the run in ``workdir``.

  The recorded one (with overrides) when the command line named no
  ``--config``; else ``--config``'s, resolved for ``backend``
  (`config_for_backend`), with a warning that lists the keys in which it
  differs from the run's recorded config.
  """
  config, _ = config_for_backend(config_flag, backend)
  if not config_is_recorded(config_flag):
    keys = [k for k in differing_keys(config, workdir) if k != "auto_cpu"]
    if keys:
      logging.warning(
        "--config differs from %s in %s; using --config.",
        os.path.join(workdir, workdir_lib.CONFIG_FILE),
        ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else ""),
      )
  return config
