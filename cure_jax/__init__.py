"""cure_jax: certified training against several threat models at once (CURE).

``cure_jax.load(workdir) -> (model, variables, config)`` loads a trained run
(`cure_jax.workdir.load`). Importing the package imports nothing else, so
loading a config stays free of JAX.
"""

__all__ = ("load",)


def __getattr__(name: str):
  if name == "load":
    from cure_jax.workdir import load  # pylint: disable=g-import-not-at-top

    return load
  raise AttributeError(f"module 'cure_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted([*globals(), *__all__])
