"""Branch and bound with β-CROWN: decide points the relaxations leave open.

For one test point x with label y and the set X = B_p(x, ε) ∩ [0, 1]^d, the
property is min_{x'∈X} z_y(x') − z_j(x') > 0 for every j ≠ y: the margin
case of `bab_search` (unsafe rows e_j − e_y, each its own disjunct). Before
any split, and once the root's α-CROWN bounds leave some margin open, a PGD
attack on the margin (`cure_jax.attacks.pgd`) looks for a counterexample.

A point ends *verified*, *falsified* (a point of X the model gets wrong,
confirmed by a plain forward pass of ``apply_fn`` and a membership test in
float64) or *unknown* (see `bab_search`). The network must be a chain of
affine operations and ReLUs (`bounds.splits.relu_chain`); others raise
`UnsupportedPrimitiveError`.
"""

import hashlib
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax import attacks
from cure_jax.bounds import splits
from cure_jax.certify import bab_search
from cure_jax.certify.bab_search import (
  FALSIFIED,
  UNKNOWN,
  VERIFIED,
  BaBSettings,
  Verifier,
  margin_rows,
)
from cure_jax.parallel.precision import cast_floating
from cure_jax.types import PIXEL_DOMAIN, PyTree

__all__ = [
  "FALSIFIED",
  "UNKNOWN",
  "VERIFIED",
  "BaBSettings",
  "PointResult",
  "is_counterexample",
  "margin_rows",
  "verifier_for",
  "verify_point",
]

P_OF_NORM = {"linf": math.inf, "l2": 2.0, "l1": 1.0}


class PointResult(NamedTuple):
  """Outcome for one point.

  Attributes:
    status: `VERIFIED`, `FALSIFIED` or `UNKNOWN`.
    lower: the smallest margin lower bound over the open domains (+inf when
      verified, the root bound's where falsified by the attack first).
    counterexample: for `FALSIFIED`, a point of the input set (the
      image's shape) where some margin is negative; else None.
    domains: domains bounded.
    seconds: time spent (compilation excluded).
  """

  status: str
  lower: float
  counterexample: np.ndarray | None
  domains: int
  seconds: float


def is_counterexample(
  apply_fn: Callable,
  variables: PyTree,
  candidate,
  image,
  label: int,
  *,
  norm: str,
  eps: float,
) -> bool:
  """Whether ``candidate`` lies in B_p(image, ε) ∩ [0, 1]^d (checked in
  float64) and some margin z_y − z_j of the model there is negative."""
  candidate = np.asarray(candidate, np.float64)
  image = np.asarray(image, np.float64)
  if candidate.shape != image.shape:
    return False
  lo, hi = PIXEL_DOMAIN
  if candidate.min() < lo or candidate.max() > hi:
    return False
  distance = np.linalg.norm((candidate - image).ravel(), ord=P_OF_NORM[norm])
  if not distance <= eps:
    return False
  logits = np.asarray(
    apply_fn(variables, jnp.asarray(candidate[None], jnp.float32), train=False)
  )[0]
  others = np.delete(logits, label)
  return bool(logits[label] - others.max() < 0)


_VERIFIERS: dict = {}
_MAX_CACHED = 4


def _fingerprint(variables: PyTree) -> str:
  """A digest of the variables' values, shapes and structure."""
  digest = hashlib.sha256(str(jax.tree.structure(variables)).encode())
  for leaf in jax.tree.leaves(variables):
    leaf = np.asarray(leaf)
    digest.update(str((leaf.shape, leaf.dtype)).encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def verifier_for(apply_fn, variables, norm, settings, image_shape) -> Verifier:
  """The verifier of a model's weights for one norm, cached by the weights'
  digest (its executables are reused across points and batches)."""
  key = (
    apply_fn,
    _fingerprint(variables),
    norm,
    settings._replace(seconds=0.0),  # the time limit compiles nothing
    tuple(image_shape),
  )
  if key not in _VERIFIERS:
    chain = splits.relu_chain(
      lambda x: apply_fn(variables, x, train=False),
      jnp.zeros((1,) + tuple(image_shape), jnp.float32),
    )
    if len(_VERIFIERS) >= _MAX_CACHED:
      _VERIFIERS.pop(next(iter(_VERIFIERS)))
    _VERIFIERS[key] = Verifier(chain, norm, settings)
  return _VERIFIERS[key]


def _attack(verifier, apply_fn, variables, image, label, eps, key):
  """A PGD counterexample candidate (margin loss), image-shaped."""
  settings = verifier.settings

  def attack(image, label, eps, key):
    return attacks.pgd(
      lambda x: apply_fn(variables, x, train=False),
      image[None],
      label[None],
      norm=verifier.norm,
      eps=eps,
      steps=settings.attack_steps,
      step_size=2.5 * eps / settings.attack_steps,
      key=key,
      restarts=settings.attack_restarts,
      loss="margin",
    )[0]

  args = (jnp.asarray(image), jnp.int32(label), jnp.float32(eps), key)
  return np.asarray(verifier.call("attack", attack, *args))


def verify_point(
  apply_fn: Callable,
  variables: PyTree,
  image,
  label: int,
  *,
  norm: str,
  eps: float,
  num_classes: int,
  settings: BaBSettings = BaBSettings(),
  key: jax.Array | None = None,
) -> PointResult:
  """Decides min_{x'∈B_p(x,ε)∩[0,1]^d} z_y − z_j > 0 ∀ j ≠ y by BaB.

  Args:
    apply_fn: ``apply_fn(variables, x, train=False) -> logits [B, K]``, a
      chain of affine operations and ReLUs.
    variables: the model's variables (cast to float32).
    image: one input x in [0, 1] (no batch axis).
    label: y.
    norm: ``'linf'``, ``'l2'`` or ``'l1'``.
    eps: ε >= 0.
    num_classes: K.
    settings: `BaBSettings`.
    key: PRNG key of the attack (default PRNGKey(0)).

  Returns:
    A `PointResult`.

  Raises:
    UnsupportedPrimitiveError: the network is not a ReLU chain.
    MemoryBudgetError: one domain does not fit the memory budget.
    ValueError: for a bad norm, radius or label.
  """
  if norm not in P_OF_NORM:
    raise ValueError(f"Unknown norm {norm!r}: use one of {tuple(P_OF_NORM)}.")
  if not float(eps) >= 0:
    raise ValueError(f"eps must be >= 0, got {eps!r}.")
  if not 0 <= int(label) < num_classes:
    raise ValueError(f"label must lie in [0, {num_classes}), got {label}.")
  variables = cast_floating(variables, jnp.float32)
  image = np.asarray(image, np.float32)
  label, eps = int(label), float(eps)
  key = jax.random.PRNGKey(0) if key is None else key
  verifier = verifier_for(apply_fn, variables, norm, settings, image.shape)
  found = lambda x: is_counterexample(
    apply_fn, variables, x, image, label, norm=norm, eps=eps
  )
  outcome = bab_search.search(
    verifier,
    splits.input_set(image.reshape(-1), eps, P_OF_NORM[norm], PIXEL_DOMAIN),
    bab_search.margin_spec(label, num_classes),
    lambda flat: found(np.reshape(flat, image.shape)),
    seconds=settings.seconds,
    after_root=lambda: _attack(
      verifier, apply_fn, variables, image, label, eps, key
    ).reshape(-1),
  )
  counterexample = outcome.counterexample
  if counterexample is not None:
    counterexample = np.reshape(counterexample, image.shape)
  return PointResult(
    outcome.status,
    outcome.lower,
    counterexample,
    outcome.domains,
    outcome.seconds,
  )
