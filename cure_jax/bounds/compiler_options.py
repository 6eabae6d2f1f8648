"""`jit` for bound computations: `jax.jit` with XLA:CPU options that suit them.

CROWN's and α-CROWN's backward passes end in large reductions of elementwise
products (⟨A, x⟩ over every row's coefficients, the dual norms), and
α-CROWN differentiates convolutions of thousands of rows. Recent XLA:CPU
versions hand such reductions and convolutions to YNNPACK by default: a
YNNPACK reduction takes every operand of the fused product as a
materialized array (openxla/xla#46351, jax-ml/jax#37465), and on the small
MNIST CNN a YNNPACK convolution of α-CROWN's gradient ran 9× slower than
XLA's own. With YNNPACK kept to individual dot products, CROWN of that
network ran 2.4× and α-CROWN 1.7× faster (docs/verifier-benchmark.md), and
both compiled faster. Training steps were unaffected either way.

`jit` compiles with ``xla_cpu_experimental_ynn_fusion_type`` set to
individual dot products when the default backend is the CPU, the installed
jaxlib accepts the option, and ``XLA_FLAGS`` does not set it already (a
user's choice wins); otherwise it is `jax.jit`. The choice is made at the
first call, not at import, so that `jax.distributed.initialize` can still
run before the backend starts.

>>> from cure_jax import bounds
>>> lower = bounds.jit(bounds.crown(model.apply, bound="lower"))
"""

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

OPTION = "xla_cpu_experimental_ynn_fusion_type"
VALUE = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


@functools.cache
def bound_compiler_options() -> dict[str, str]:
  """The compiler options `jit` adds: ``{OPTION: VALUE}`` or ``{}``."""
  if OPTION in os.environ.get("XLA_FLAGS", ""):
    return {}
  if jax.default_backend() != "cpu":
    return {}
  options = {OPTION: VALUE}
  try:  # an option this jaxlib does not know fails the compilation
    jax.jit(jnp.sum, compiler_options=options).lower(jnp.zeros(2)).compile()
  except Exception:  # noqa: BLE001 (any failure: plain jax.jit)
    return {}
  return options


class Jitted:
  """`jax.jit(fn, **kwargs)` plus `bound_compiler_options`, built at the
  first call, `lower` or other use of jax.jit's API. Called inside another
  transformation (jit, vmap, grad), it is a nested `jax.jit`, which takes
  no compiler options: the outer program's options apply."""

  def __init__(self, fn: Callable, kwargs: dict[str, Any]):
    self._fn, self._kwargs = fn, kwargs
    self._jitted = self._nested = None
    functools.update_wrapper(self, fn)

  def _build(self):
    if self._jitted is None:
      kwargs = dict(self._kwargs)
      options = dict(bound_compiler_options())
      options.update(kwargs.pop("compiler_options", None) or {})
      self._jitted = jax.jit(
        self._fn, compiler_options=options or None, **kwargs
      )
    return self._jitted

  def _build_nested(self):
    if self._nested is None:
      kwargs = dict(self._kwargs)
      kwargs.pop("compiler_options", None)
      self._nested = jax.jit(self._fn, **kwargs)
    return self._nested

  def __call__(self, *args, **kwargs):
    leaves = jax.tree_util.tree_leaves((args, kwargs))
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
      return self._build_nested()(*args, **kwargs)
    return self._build()(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self._build().lower(*args, **kwargs)

  def __getattr__(self, name: str):  # the rest of jax.jit's API
    if name in ("_fn", "_kwargs", "_jitted", "_nested"):
      raise AttributeError(name)
    return getattr(self._build(), name)


def jit(fn: Callable | None = None, **kwargs) -> Jitted | Callable:
  """`jax.jit` for functions that compute bounds (same keyword arguments;
  usable as ``@jit`` or ``@functools.partial(jit, static_argnums=...)``)."""
  if fn is None:
    return functools.partial(jit, **kwargs)
  return Jitted(fn, kwargs)
