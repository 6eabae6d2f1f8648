"""Mixed precision for training on accelerators; float32 for certification.

A `Policy` names three dtypes (as in DeepMind's jmp): parameters are stored
and updated in `param_dtype`, the passes run in `compute_dtype`, and outputs
(logits, losses, updated batch statistics) come back in `output_dtype`.
`MIXED_BFLOAT16` (float32 / bfloat16 / float32) about halves activation
memory; gradients arrive in float32 because the cast to bfloat16 happens
inside the differentiated function. bfloat16 has float32's exponent range,
so no loss scaling is needed (float16 would need it and is not offered).

Certification always runs in float32 (`CERTIFICATION`) and under
`certification_precision()`. A certificate asserts that a lower bound on the
margin is positive; bfloat16 keeps 8 mantissa bits (relative rounding 2^-8),
an error of the same order as the margins certified at small ε, and the
same holds for float32 matmuls that XLA runs as TF32 (GPUs) or as bfloat16
passes (TPUs) at the default precision. `certification_precision()` asks for
full float32 matmuls and convolutions. (Like the reference tools, bounds use
round-to-nearest float32, not directed rounding.)
"""

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cure_jax.types import PyTree


class Policy(NamedTuple):
  """The dtypes of parameters, of computation, and of outputs."""

  param_dtype: jnp.dtype = jnp.float32
  compute_dtype: jnp.dtype = jnp.float32
  output_dtype: jnp.dtype = jnp.float32

  def cast_to_param(self, tree: PyTree) -> PyTree:
    """Casts the floating leaves of `tree` to `param_dtype`."""
    return cast_floating(tree, self.param_dtype)

  def cast_to_compute(self, tree: PyTree) -> PyTree:
    """Casts the floating leaves of `tree` (params, inputs) to compute."""
    return cast_floating(tree, self.compute_dtype)

  def cast_to_output(self, tree: PyTree) -> PyTree:
    """Casts the floating leaves of `tree` to `output_dtype`."""
    return cast_floating(tree, self.output_dtype)


FLOAT32 = Policy(jnp.float32, jnp.float32, jnp.float32)
MIXED_BFLOAT16 = Policy(jnp.float32, jnp.bfloat16, jnp.float32)
CERTIFICATION = FLOAT32

_POLICIES = {
  "float32": FLOAT32,
  "bfloat16": MIXED_BFLOAT16,
  "mixed_bfloat16": MIXED_BFLOAT16,
}


def get_policy(name: str) -> Policy:
  """Returns the policy 'float32' or 'bfloat16' (alias 'mixed_bfloat16':
  float32 parameters, bfloat16 compute); ValueError for any other name."""
  if name not in _POLICIES:
    hint = (
      " float16 needs loss scaling; use bfloat16."
      if "float16" in name and "bfloat16" not in name
      else ""
    )
    raise ValueError(
      f"Unknown precision policy {name!r}; choose one of "
      f"{sorted(_POLICIES)}.{hint}"
    )
  return _POLICIES[name]


def cast_floating(tree: PyTree, dtype: jnp.dtype) -> PyTree:
  """Casts the floating-point array leaves of `tree` to `dtype`.

  Integer, boolean and PRNG-key arrays and Python scalars are left as they
  are (labels, step counters, keys, flags like `train=False`).
  """

  def cast(leaf):
    if (
      hasattr(leaf, "dtype")
      and hasattr(leaf, "astype")
      and jnp.issubdtype(leaf.dtype, jnp.floating)
    ):
      return leaf.astype(dtype)
    return leaf

  return jax.tree_util.tree_map(cast, tree)


def apply_with_policy(
  apply_fn: Callable[..., PyTree],
  policy: Policy,
  cast_collections: Sequence[str] = ("params",),
) -> Callable[..., PyTree]:
  """Wraps a Flax-style `apply(variables, *args, **kwargs)` in a policy.

  The listed variable collections and every floating argument are cast to
  `policy.compute_dtype`; the outputs (including mutated collections such as
  `batch_stats`) are cast to `policy.output_dtype`. Collections not listed,
  such as BatchNorm running statistics, enter in their stored dtype so that
  their moving averages are not rounded to bfloat16. Returns `apply_fn`
  itself for an all-float32 policy.
  """
  if policy == FLOAT32:
    return apply_fn

  def apply(variables: Mapping[str, PyTree], *args, **kwargs) -> PyTree:
    variables = {
      name: policy.cast_to_compute(value) if name in cast_collections else value
      for name, value in variables.items()
    }
    args, kwargs = policy.cast_to_compute((args, kwargs))
    return policy.cast_to_output(apply_fn(variables, *args, **kwargs))

  return apply


def certification_precision():
  """Context in which matmuls and convolutions run at full float32 precision.

  `jax.default_matmul_precision('highest')`; wrap the tracing (first call) of
  certification functions in it (the setting is part of the jit cache key).
  """
  return jax.default_matmul_precision("highest")


class PolicyModel:
  """A Flax module whose ``apply`` runs under a precision policy.

  The training step takes it in place of the module: parameters stay in
  ``param_dtype`` in the train state and optimizer, the forward, backward and
  bounded passes compute in ``compute_dtype`` (`apply_with_policy`, BatchNorm
  statistics uncast), and losses, metrics and new statistics come back in
  ``output_dtype``. Certification uses the module itself, in float32.
  """

  def __init__(self, module, policy: Policy):
    self.module = module
    self.policy = policy
    self.apply = apply_with_policy(module.apply, policy)

  def __getattr__(self, name):
    return getattr(self.module, name)


def training_model(module, mixed_precision: bool):
  """``module``, or a `PolicyModel` of `MIXED_BFLOAT16` if asked for."""
  return PolicyModel(module, MIXED_BFLOAT16) if mixed_precision else module
