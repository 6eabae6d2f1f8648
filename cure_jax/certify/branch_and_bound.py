"""Branch and bound with β-CROWN: decide points the relaxations leave open.

For one test point x with label y and the set X = B_p(x, ε) ∩ [0, 1]^d, the
property is min_{x'∈X} z_y(x') − z_j(x') > 0 for every j ≠ y. The search
(Wang et al., NeurIPS 2021, β-CROWN) keeps a pool of *domains* — sign
constraints on some ReLU inputs — whose union covers X:

1. the root: CROWN bounds of every ReLU input, then α-CROWN on the margins;
   rows (j) already positive are done for the whole point;
2. a PGD attack on the margin (`cure_jax.attacks.pgd`) looks for a
   counterexample first;
3. each step takes up to ``batch_domains`` domains with the lowest bound,
   splits each on one unstable ReLU (z ≥ 0 / z ≤ 0), chosen by the intercept
   score (how much its triangle's intercept lowers the bound: Σ_rows
   max(−λ, 0)·(−u·l)/(u − l), λ its coefficient in the bound), and bounds
   all children at once (`jax.vmap` over domains) by `bounds.splits`: α
   and the split multipliers β optimized by Adam, warm-started from the
   parent; a child's bound is never below its parent's (a sub-domain);
4. a child whose margins are all positive is dropped; the minimizer of each
   child's relaxed bound is checked as a counterexample.

A point ends *verified* (no domain left: every margin's lower bound is
positive on every part of X), *falsified* (a point of X the model gets wrong,
confirmed by a plain forward pass of ``apply_fn`` and a membership test in
float64) or *unknown* (its time ran out, the pool of open domains outgrew a
quarter of the memory budget, or a fully split domain could not be decided). The network must be a chain of affine operations and ReLUs
(`bounds.splits.relu_chain`); others raise `UnsupportedPrimitiveError`.
"""

import functools
import hashlib
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cure_jax import attacks
from cure_jax.bounds import splits
from cure_jax.certify import memory_budget
from cure_jax.parallel.precision import cast_floating, certification_precision
from cure_jax.types import PIXEL_DOMAIN, PyTree

VERIFIED, FALSIFIED, UNKNOWN = "verified", "falsified", "unknown"
P_OF_NORM = {"linf": math.inf, "l2": 2.0, "l1": 1.0}
# A counterexample candidate is pulled this fraction towards x before the
# check, so that float32 rounding cannot put it outside the ball.
_SHRINK = 1e-4


class BaBSettings(NamedTuple):
  """The search's settings (hashable).

  Attributes:
    seconds: time limit per point, compilation excluded.
    batch_domains: domains split per step (2× children bounded at once).
    steps: Adam steps on (α, β) per step.
    root_steps: Adam steps on α at the root.
    alpha_lr: Adam's learning rate for α.
    beta_lr: Adam's learning rate for β.
    attack_steps: PGD steps per restart of the initial attack.
    attack_restarts: PGD random starts.
    memory_budget_gb: the bounding step's memory budget (None: default,
      see `memory_budget.budget_bytes`); halves ``batch_domains`` until the
      step fits.
  """

  seconds: float = 10.0
  batch_domains: int = 64
  steps: int = 20
  root_steps: int = 50
  alpha_lr: float = 0.1
  beta_lr: float = 0.05
  attack_steps: int = 50
  attack_restarts: int = 5
  memory_budget_gb: float | None = None


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


def margin_rows(label: int, num_classes: int) -> np.ndarray:
  """C with rows e_y − e_j, j ≠ y in increasing order: [K − 1, K]."""
  others = [j for j in range(num_classes) if j != label]
  rows = np.zeros((num_classes - 1, num_classes), np.float32)
  rows[:, label] = 1.0
  rows[np.arange(num_classes - 1), others] = -1.0
  return rows


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


class _Pool(NamedTuple):
  """Domains, stacked on a leading axis (numpy, host side)."""

  splits: tuple[np.ndarray, ...]  # [N, n_k] in {−1, 0, 1}
  alphas: tuple[np.ndarray, ...]  # [N, S, n_k]
  betas: tuple[np.ndarray, ...]  # [N, S, n_k]
  best: np.ndarray  # [N, S]
  branch: np.ndarray  # [N] flat neuron index over all ReLU layers
  can_split: np.ndarray  # [N] bool


def _take(pool: _Pool, rows) -> _Pool:
  return jax.tree.map(lambda a: a[rows], pool)


def _concat(pools) -> _Pool:
  return jax.tree.map(lambda *a: np.concatenate(a), *pools)


class _Step(NamedTuple):
  """What one bounding step returns per domain."""

  alphas: tuple
  betas: tuple
  best: jax.Array  # [D, S]
  branch: jax.Array  # [D]
  can_split: jax.Array  # [D]
  candidate_margin: jax.Array  # [D] the least margin at the candidates
  candidate: jax.Array  # [D, n_0]


class _Verifier:
  """A network's jitted bounding step and intervals (one per model and norm)."""

  def __init__(self, chain: splits.ReluChain, norm: str, settings: BaBSettings):
    self.chain = chain
    self.norm = norm
    self.p = P_OF_NORM[norm]
    self.settings = settings
    self.widths = chain.widths[1:-1]
    self.compiled: dict[tuple, Any] = {}
    self.compile_seconds = 0.0
    self.max_domains = 2 * settings.batch_domains

  def _box(self, center, eps):
    return splits.input_set(center, eps, self.p, PIXEL_DOMAIN)

  def _intervals(self, center, eps):
    return splits.crown_intervals(self.chain, self._box(center, eps))

  def _domain_bound(self, box, rows, intervals, split, alphas, betas):
    return splits.backward_bound(
      self.chain,
      box,
      rows,
      len(self.chain.segments),
      intervals,
      split,
      alphas,
      betas,
    )

  def _branch(self, bound, intervals, split, open_rows):
    """(flat index of the neuron with the best intercept score, any?)."""
    scores = []
    for (lower, upper), s, coeffs in zip(intervals, split, bound.relu_coeffs):
      lines = splits.relax(lower, upper, s)
      weight = open_rows.astype(coeffs.dtype)[:, None]
      intercept = jnp.sum(weight * jnp.maximum(-coeffs, 0.0), 0) * (
        lines.intercept
      )
      tie_break = 1e-6 * (upper - lower)  # widest first when all are 0
      scores.append(jnp.where(lines.unstable, intercept + tie_break, -jnp.inf))
    scores = jnp.concatenate(scores)
    return jnp.argmax(scores), jnp.isfinite(jnp.max(scores))

  def _candidates(self, box, rows, points):
    """Counterexample candidates in the set: the least margin and its point."""
    inside = attacks.project(
      points,
      jnp.broadcast_to(box.center, points.shape),
      box.eps,
      norm=self.norm,
      domain=PIXEL_DOMAIN,
    )
    inside = box.center + (inside - box.center) * (1.0 - _SHRINK)
    margins = jnp.min(
      jax.vmap(lambda x: rows @ splits.chain_logits(self.chain, x))(inside), -1
    )
    worst = jnp.argmin(margins)
    return margins[worst], inside[worst]

  def step(self, steps, center, eps, rows, done, intervals, pool):
    """Optimizes (α, β) of every domain; see `_Step`. Jitted per shape."""
    box = self._box(center, eps)
    alpha_opt = optax.adam(self.settings.alpha_lr)
    beta_opt = optax.adam(self.settings.beta_lr)

    def one_domain(split, alphas, betas, best):
      def loss(params):
        bound = self._domain_bound(box, rows, intervals, split, *params)
        return -jnp.sum(jnp.where(done, 0.0, bound.lower)), bound.lower

      def update(carry, _):
        params, states, best = carry
        (_, lower), grads = jax.value_and_grad(loss, has_aux=True)(params)
        best = jnp.maximum(best, lower)
        new = []
        for opt, p, g, s in zip((alpha_opt, beta_opt), params, grads, states):
          u, s = opt.update(g, s, p)
          new.append((optax.apply_updates(p, u), s))
        alphas = jax.tree.map(lambda a: jnp.clip(a, 0.0, 1.0), new[0][0])
        betas = jax.tree.map(lambda b: jnp.maximum(b, 0.0), new[1][0])
        return ((alphas, betas), (new[0][1], new[1][1]), best), None

      params = (alphas, betas)
      states = (alpha_opt.init(alphas), beta_opt.init(betas))
      (params, _, best), _ = jax.lax.scan(
        update, (params, states, best), None, length=steps
      )
      bound = self._domain_bound(box, rows, intervals, split, *params)
      best = jnp.maximum(best, bound.lower)
      open_rows = ~done & (best <= 0)
      branch, can_split = self._branch(bound, intervals, split, open_rows)
      margin, point = self._candidates(box, rows, bound.minimizer)
      return _Step(*params, best, branch, can_split, margin, point)

    return jax.vmap(one_domain)(pool.splits, pool.alphas, pool.betas, pool.best)

  def _call(self, key, fn, *args):
    """``fn(*args)`` by an executable compiled once per ``key``; its
    compilation time is added to ``compile_seconds``."""
    if key not in self.compiled:
      begin = time.perf_counter()
      with certification_precision():
        self.compiled[key] = jax.jit(fn).lower(*args).compile()
      self.compile_seconds += time.perf_counter() - begin
    with certification_precision():
      return jax.block_until_ready(self.compiled[key](*args))

  def bound_intervals(self, center, eps):
    """CROWN intervals of every ReLU input over the point's set."""
    return self._call(("intervals",), self._intervals, center, eps)

  def run_step(self, steps, center, eps, rows, done, intervals, pool, budget):
    """`step` on a pool of any size, padded to a power of two (one
    executable per size); over the memory budget, the pool is bounded in
    chunks of the next smaller size (and later steps take fewer domains). Returns numpy arrays."""
    size = len(pool.best)
    padded = _padded_size(size)
    rows_taken = np.concatenate([np.arange(size), np.zeros(padded - size, int)])
    args = (center, eps, rows, done, intervals, _take(pool, rows_taken))
    key = ("step", steps, padded)
    if key not in self.compiled:
      begin = time.perf_counter()
      with certification_precision():
        compiled = (
          jax.jit(functools.partial(self.step, steps)).lower(*args).compile()
        )
      self.compile_seconds += time.perf_counter() - begin
      need = memory_budget.compiled_bytes(compiled)
      if need is not None:
        need = memory_budget.RUNTIME_OVERHEAD * need
      if need is not None and need > budget:
        if padded == 1:
          raise memory_budget.MemoryBudgetError(
            f"branch and bound needs {need / memory_budget.GIB:.3g} GiB to "
            f"bound one domain, over the memory budget of "
            f"{budget / memory_budget.GIB:.3g} GiB; raise "
            f"--config.eval.memory_budget_gb or leave eval.bab_seconds at 0."
          )
        half = max(1, padded // 4)  # the next smaller executable size
        self.max_domains = min(self.max_domains, half)
        return _concat(
          [
            self.run_step(
              steps,
              center,
              eps,
              rows,
              done,
              intervals,
              _take(pool, np.arange(i, min(i + half, size))),
              budget,
            )
            for i in range(0, size, half)
          ]
        )
      self.compiled[key] = compiled
    with certification_precision():
      out = jax.block_until_ready(self.compiled[key](*args))
    return jax.tree.map(lambda a: np.asarray(a)[:size], out)


def _padded_size(size: int) -> int:
  """1, or the least of 2, 8, 32, 128, … (×4) at least ``size``: few
  executables to compile (each costs seconds), little padding to run."""
  padded = 1 if size <= 1 else 2
  while padded < size:
    padded *= 4
  return padded


def _children(pool: _Pool, widths) -> _Pool:
  """Each domain split on its branching neuron into z ≥ 0 and z ≤ 0 (a
  domain with nothing left to split is bounded again as it is)."""
  offsets = np.cumsum((0,) + tuple(widths))
  parts = []
  for i in range(len(pool.best)):
    one = _take(pool, [i])
    if not pool.can_split[i]:
      parts.append(one)
      continue
    layer = int(np.searchsorted(offsets, pool.branch[i], side="right") - 1)
    index = int(pool.branch[i] - offsets[layer])
    for sign in (1.0, -1.0):
      split = [s.copy() for s in one.splits]
      split[layer][0, index] = sign
      parts.append(one._replace(splits=tuple(split)))
  return _concat(parts)


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


def verifier_for(apply_fn, variables, norm, settings, image_shape) -> _Verifier:
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
    _VERIFIERS[key] = _Verifier(chain, norm, settings)
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
  return np.asarray(verifier._call(("attack",), attack, *args))


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
  budget = memory_budget.budget_bytes(settings.memory_budget_gb)
  clock = _Clock(settings.seconds, verifier)
  found = lambda x: is_counterexample(
    apply_fn, variables, x, image, label, norm=norm, eps=eps
  )

  center = jnp.asarray(image.reshape(-1))
  rows = jnp.asarray(margin_rows(label, num_classes))
  intervals = verifier.bound_intervals(center, jnp.float32(eps))
  num_rows = num_classes - 1
  root = _Pool(
    tuple(np.zeros((1, n), np.float32) for n in verifier.widths),
    tuple(
      np.broadcast_to(
        np.asarray(u > -l, np.float32), (1, num_rows, len(l))
      ).copy()
      for l, u in intervals
    ),
    tuple(np.zeros((1, num_rows, n), np.float32) for n in verifier.widths),
    np.full((1, num_rows), -np.inf, np.float32),
    np.zeros((1,), np.int64),
    np.zeros((1,), bool),
  )
  done = np.zeros((num_rows,), bool)
  bounded = lambda pool, steps: verifier.run_step(
    steps,
    center,
    jnp.float32(eps),
    rows,
    jnp.asarray(done),
    intervals,
    pool,
    budget,
  )
  out = bounded(root, settings.root_steps)
  if out.candidate_margin[0] < 0 and found(
    out.candidate[0].reshape(image.shape)
  ):
    return clock.result(
      FALSIFIED,
      float(np.min(out.best)),
      out.candidate[0].reshape(image.shape),
      1,
    )
  done = out.best[0] > 0
  if done.all():
    return clock.result(VERIFIED, math.inf, None, 1)
  adversarial = _attack(verifier, apply_fn, variables, image, label, eps, key)
  if found(adversarial):
    return clock.result(FALSIFIED, float(np.min(out.best)), adversarial, 1)
  pool = _pool_from(root, out)
  count = 1
  pool_budget = budget // 4  # the open domains live in host memory
  while len(pool.best) and not clock.expired() and _nbytes(pool) <= pool_budget:
    step_start = time.perf_counter() - verifier.compile_seconds
    open_lower = np.where(done, np.inf, pool.best).min(axis=1)
    order = np.argsort(open_lower, kind="stable")
    take = min(len(order), max(1, verifier.max_domains // 2))
    picked, rest = _take(pool, order[:take]), _take(pool, order[take:])
    children = _children(picked, verifier.widths)
    out = bounded(children, settings.steps)
    count += len(children.best)
    worst = int(np.argmin(out.candidate_margin))
    if out.candidate_margin[worst] < 0:
      point = out.candidate[worst].reshape(image.shape)
      if found(point):
        return clock.result(FALSIFIED, float(open_lower.min()), point, count)
    children = _pool_from(children, out)
    keep = ~np.all(done | (children.best > 0), axis=1)
    pool = _concat([rest, _take(children, keep)])
    clock.last_step = (
      time.perf_counter() - verifier.compile_seconds - step_start
    )
  if not len(pool.best):
    return clock.result(VERIFIED, math.inf, None, count)
  lower = float(np.where(done, np.inf, pool.best).min())
  return clock.result(UNKNOWN, lower, None, count)


def _nbytes(pool: _Pool) -> int:
  return sum(leaf.nbytes for leaf in jax.tree.leaves(pool))


def _pool_from(pool: _Pool, out: _Step) -> _Pool:
  return _Pool(
    pool.splits,
    tuple(np.asarray(a) for a in out.alphas),
    tuple(np.asarray(b) for b in out.betas),
    # A NaN bound (none is expected) counts as no bound at all.
    np.maximum(pool.best, np.nan_to_num(out.best, nan=-np.inf)),
    np.asarray(out.branch),
    np.asarray(out.can_split),
  )


class _Clock:
  """A point's time limit; the verifier's compilation time is excluded."""

  def __init__(self, seconds: float, verifier: _Verifier):
    self.start = time.perf_counter()
    self.seconds = seconds
    self.verifier = verifier
    self.compile_at_start = verifier.compile_seconds
    self.last_step = 0.0  # seconds of the latest step, compilation excluded

  def elapsed(self) -> float:
    compiling = self.verifier.compile_seconds - self.compile_at_start
    return time.perf_counter() - self.start - compiling

  def expired(self) -> bool:
    """Whether another step, as long as the last one, would overrun."""
    return self.elapsed() + self.last_step > self.seconds

  def result(self, status, lower, counterexample, domains) -> PointResult:
    return PointResult(status, lower, counterexample, domains, self.elapsed())
