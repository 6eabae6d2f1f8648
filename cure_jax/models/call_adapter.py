"""Any Flax module or apply function, called the way certification calls it.

Certification, attacks and the training objectives call a model as
``apply_fn(variables, x, train=False)``. `adapt_apply` turns what a user has —
a Flax module, its ``apply``, or any function ``(variables, x, ...) ->
logits`` — into such a function:

* ``train`` is passed on only when the model takes it: a module whose
  ``__call__`` (or a function whose signature) has a ``train`` parameter or
  ``**kwargs`` gets it, any other model is called without it (such a model
  has one mode only, and ``train`` is dropped whatever its value);
* every call runs under `refuse_batch_statistics`
  (`cure_jax.bounds.batch_statistics`, which the bound transforms apply to
  any function too): a `flax.linen.BatchNorm` that normalizes with the
  batch's own statistics (``use_running_average`` False) raises
  `BatchStatisticsError`. Its output then depends on the other examples of
  the batch, so neither a certificate of one example nor the bounded pass
  means anything. In evaluation mode (``use_running_average=True``) the flax
  layer is an affine map of fixed statistics and is certified exactly.

The adapted function is a frozen dataclass: equal (and of equal hash) for
equal wrapped functions, so `jax.jit` caches that take it as a static argument
hit for ``adapt_apply(model.apply)`` made afresh on every call.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from cure_jax.bounds.batch_statistics import (
  BatchStatisticsError,
  refuse_batch_statistics,
)

__all__ = (
  "AdaptedApply",
  "BatchStatisticsError",
  "accepts_train",
  "adapt_apply",
  "refuse_batch_statistics",
)

_FLAX_APPLY = nn.Module.apply


def _signature_target(fn: Any) -> Any:
  """The callable whose parameters say whether the model takes ``train``."""
  if isinstance(fn, nn.Module):
    return type(fn).__call__
  module = getattr(fn, "__self__", None)
  if isinstance(module, nn.Module) and getattr(fn, "__func__", None) is (
    _FLAX_APPLY
  ):
    return type(module).__call__
  return fn


def accepts_train(apply_fn: Any) -> bool:
  """Whether ``apply_fn`` (a Flax module, its ``apply`` or a function) takes
  a ``train`` keyword: a parameter of that name or ``**kwargs``.

  A callable without an inspectable signature is assumed to follow the
  library's convention ``apply_fn(variables, x, train=...)``.
  """
  if isinstance(apply_fn, AdaptedApply):
    return True
  try:
    parameters = inspect.signature(_signature_target(apply_fn)).parameters
  except (TypeError, ValueError):
    return True
  return "train" in parameters or any(
    p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
  )


@dataclasses.dataclass(frozen=True)
class AdaptedApply:
  """``apply_fn`` callable as ``(variables, x, ..., train=False)``.

  Attributes:
    apply_fn: the wrapped function (e.g. a module's bound ``apply``).
    passes_train: whether ``train`` is handed on to ``apply_fn``.
  """

  apply_fn: Callable[..., Any]
  passes_train: bool

  def __call__(self, variables, *args, train: bool = False, **kwargs):
    if self.passes_train:
      kwargs["train"] = train
    with refuse_batch_statistics():
      return self.apply_fn(variables, *args, **kwargs)

  @property
  def __name__(self) -> str:  # error messages of the bound transforms
    return getattr(self.apply_fn, "__name__", type(self.apply_fn).__name__)


@functools.singledispatch
def adapt_apply(model_or_apply_fn: Any) -> AdaptedApply:
  """A Flax module or apply function, called as certification calls it.

  Args:
    model_or_apply_fn: a `flax.linen.Module` (its ``apply`` is used), a
      module's ``apply``, or any ``fn(variables, x, ...) -> logits``, with or
      without a ``train`` argument. An `AdaptedApply` is returned as is.

  Returns:
    An `AdaptedApply`: ``f(variables, x, train=False)``, ``train`` passed on
    only where accepted, flax BatchNorm with batch statistics refused (see
    the module docstring).

  Raises:
    TypeError: the argument is not callable.
  """
  if not callable(model_or_apply_fn):
    raise TypeError(
      f"expected a Flax module or an apply function (variables, x) -> "
      f"logits, got {type(model_or_apply_fn).__name__}."
    )
  return AdaptedApply(model_or_apply_fn, accepts_train(model_or_apply_fn))


@adapt_apply.register
def _(model_or_apply_fn: nn.Module) -> AdaptedApply:
  return AdaptedApply(model_or_apply_fn.apply, accepts_train(model_or_apply_fn))


@adapt_apply.register
def _(model_or_apply_fn: AdaptedApply) -> AdaptedApply:
  return model_or_apply_fn
