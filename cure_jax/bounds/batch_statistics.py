"""Refusing `flax.linen.BatchNorm` with batch statistics in a bounded pass.

With ``use_running_average=False`` flax's BatchNorm normalizes each example
by the batch's own mean μ_B and variance σ²_B,

  y_i = γ (x_i − μ_B) / sqrt(σ²_B + ε) + β,   μ_B, σ²_B over the batch,

so an example's output depends on every other example of the batch: a bound
on one example's logits over its input set alone means nothing, and the
bound transforms have no rule for the 1 / sqrt of a bounded variance. With
``use_running_average=True`` (evaluation mode) the layer is the affine map
γ (x − μ) / sqrt(σ² + ε) + β of the stored statistics and is bounded
exactly. `refuse_batch_statistics` turns the first case into a
`BatchStatisticsError` that says so, instead of a missing-rule error deep in
the traced graph; it never swaps in the running statistics.

Flax is not a dependency of the bound transforms: a function can only call a
flax module once flax is imported, so the check is installed only then.
"""

import contextlib
import sys

_FIX = (
  "Use cure_jax.models.BatchNorm (its train=False pass is an exact affine map "
  "of the statistics in 'batch_stats', which certified training fills with "
  "the clean batch's moments), or run the flax layer in evaluation mode: "
  "call the model with train=False where train sets "
  "use_running_average=not train, or give the layer use_running_average=True."
)


class BatchStatisticsError(Exception):
  """A flax.linen.BatchNorm normalized with batch statistics in a certified
  or bounded pass (not a ValueError, which the bound transforms re-raise as a
  shape mismatch)."""


def _batch_norm_mode(args, kwargs, module) -> bool | None:
  """``use_running_average`` as flax's BatchNorm will resolve it."""
  value = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
  return module.use_running_average if value is None else value


def _refuse(next_fun, args, kwargs, context):
  """A flax method interceptor: raises on a batch-statistics BatchNorm."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  module = context.module
  if (
    isinstance(module, nn.BatchNorm)
    and context.method_name == "__call__"
    and _batch_norm_mode(args, kwargs, module) is False
  ):
    raise BatchStatisticsError(
      f"flax.linen.BatchNorm {module.name or ''!r} normalizes with the "
      "batch's own statistics (use_running_average=False, batch statistics). "
      "A certified or bounded pass needs each example's logits to be a "
      "function of that example alone, and the bound transforms cannot bound "
      f"a variance. {_FIX}"
    )
  return next_fun(*args, **kwargs)


@contextlib.contextmanager
def refuse_batch_statistics():
  """Within this context a `flax.linen.BatchNorm` call with
  ``use_running_average=False`` raises `BatchStatisticsError`.

  Checked when the module is called, i.e. once at trace time under `jax.jit`
  or a bound transform: nothing is added to the computation. Without flax
  imported there is nothing to check.
  """
  if "flax.linen" not in sys.modules:
    yield
    return
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  with nn.intercept_methods(_refuse):
    yield
