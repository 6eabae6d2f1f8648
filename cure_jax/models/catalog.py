"""`get_model`: build a model by name; `build_model`: from a config."""

import dataclasses

import flax.linen as nn

from cure_jax.models.cnn import CNN7, ConvNet, SmallCNN
from cure_jax.models.mlp import MLP

MODELS: dict[str, type[nn.Module]] = {
  "cnn7": CNN7,
  "small_cnn": SmallCNN,
  "mlp": MLP,
  "conv_net": ConvNet,
}


def model_fields(model_cls: type[nn.Module]) -> tuple[str, ...]:
  """The configurable attributes of a model class (not flax's parent/name)."""
  return tuple(
    f.name
    for f in dataclasses.fields(model_cls)
    if f.name not in ("parent", "name")
  )


def get_model(name: str, **kwargs) -> nn.Module:
  """Returns the model registered as ``name``, built with ``kwargs``.

  Lists in ``kwargs`` (as config files produce), nested ones included, become
  tuples, so the module's attributes stay hashable. Returns the unbound
  flax module.

  Raises:
    ValueError: ``name`` is not registered, or a keyword is not an attribute
      of that model; the message lists the valid choices.
  """
  if name not in MODELS:
    raise ValueError(
      f"Unknown model {name!r}; valid names are {sorted(MODELS)}."
    )
  model_cls = MODELS[name]
  fields = model_fields(model_cls)
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise ValueError(
      f"Model {name!r} has no attribute(s) {unknown}; valid ones are "
      f"{list(fields)}."
    )
  return model_cls(**{k: _as_tuples(v) for k, v in kwargs.items()})


def build_model(config) -> nn.Module:
  """The model of ``config.model``: its ``name`` and attributes (`get_model`)."""
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  return get_model(config.model.name, **kwargs)


def _as_tuples(value):
  """Turns (nested) lists into (nested) tuples; other values pass through."""
  if isinstance(value, (list, tuple)):
    return tuple(_as_tuples(v) for v in value)
  return value
