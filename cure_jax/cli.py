"""Command-line parsing shared by ``cure_jax.main`` and ``cure_jax.certify``."""

from absl import app, flags
from ml_collections import config_flags

from cure_jax import config_schema

_CONFIG_FLAG = "--config="
_OVERRIDE_PREFIX = "--config."


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


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; an unknown ``--config.<key>`` is one clear line.

  ml_collections reports an override of a missing key as a bare
  AttributeError deep inside flag parsing (no valid keys listed for nested
  ones); it exits here with `config_schema.unknown_key_message` instead.
  """
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
