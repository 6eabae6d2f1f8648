"""Command-line parsing shared by ``cure_jax.main`` and ``cure_jax.certify``."""

from absl import app

from cure_jax import settings

_CONFIG_FLAG = "--config="
_OVERRIDE_PREFIX = "--config."


def unknown_override(argv: list[str]) -> str | None:
  """The message for the first ``--config.<key>=`` naming no key, or None.

  Args:
    argv: the command line.

  Returns:
    `settings.unknown_key_message` of the first unknown override key, or
    None when the config cannot be loaded or every override key exists.
  """
  specs = [a[len(_CONFIG_FLAG) :] for a in argv if a.startswith(_CONFIG_FLAG)]
  if not specs:
    return None
  try:
    config = settings.load_config(specs[-1])
  except Exception:  # pylint: disable=broad-exception-caught
    return None  # absl reports a config that does not load.
  for arg in argv:
    if arg.startswith(_OVERRIDE_PREFIX):
      key = arg[len(_OVERRIDE_PREFIX) :].partition("=")[0]
      message = settings.unknown_key_message(config, key)
      if message:
        return message
  return None


def parse_flags(argv: list[str]) -> list[str]:
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
