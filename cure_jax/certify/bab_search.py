"""β-CROWN branch and bound over an input set for a disjunctive specification.

The input set X is a box [lo, hi] (VNNLIB's input bounds) or a norm ball
∩ a box (`bounds.splits.InputSet`). The specification describes *unsafe*
outputs as a disjunction of conjunctions: rows ``c_k·y + d_k ≥ 0`` grouped
into disjuncts D_1, …, D_m (`DisjunctiveSpec`). The property holds iff no
x ∈ X has f(x) satisfying every row of some disjunct. A disjunct is refuted
on a part P of X as soon as *one* of its rows cannot hold there:

  max_{x∈P} c_k·f(x) + d_k < 0   ⟺   min_{x∈P} −c_k·f(x) − d_k > 0,

so the search lower-bounds the *safe rows* a_k = −c_k with offsets
b_k = −d_k and refutes D on P when max_{k∈D} lower_k + b_k > 0. The margin
property of a classifier (unsafe: z_j ≥ z_y for some j ≠ y) is the special
case with rows e_j − e_y, each its own disjunct.

The search (Wang et al., NeurIPS 2021, β-CROWN) keeps a pool of *domains* —
sign constraints on some ReLU inputs — whose union covers X:

1. the root: CROWN bounds of every ReLU input, then α-CROWN on the rows;
   disjuncts refuted there are done for the whole set;
2. each step takes up to ``batch_domains`` domains with the lowest bound
   (the least, over open disjuncts, of the disjunct's best row), splits each
   on one unstable ReLU (z ≥ 0 / z ≤ 0), chosen by the intercept score
   (how much its triangle's intercept lowers the bound: Σ_open rows
   max(−λ, 0)·(−u·l)/(u − l), λ its coefficient in the bound), and bounds
   all children at once (`jax.vmap` over domains) by `bounds.splits`: α
   and the split multipliers β optimized by Adam, warm-started from the
   parent; a child's bound is never below its parent's (a sub-domain);
3. a child whose disjuncts are all refuted is dropped; the minimizer of each
   child's relaxed bound is a counterexample candidate (unsafe where
   min_D max_{k∈D} a_k·f(x) + b_k ≤ 0) — with ``candidate_steps``, also the
   point a few sign-gradient steps on the unsafe value plus the domain's
   split violation Σ max(−s z(x), 0) lead it to — returned only once
   ``confirm`` (the caller's plain forward pass and membership test)
   accepts it.

It ends *verified* (no domain left), *falsified* (a confirmed point) or
*unknown* (the time ran out, the pool of open domains outgrew a quarter of
the memory budget, or a fully split domain could not be decided). The
network must be a ReLU chain (`bounds.splits.relu_chain`).
"""

import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cure_jax import attacks, bounds
from cure_jax.bounds import splits
from cure_jax.certify import memory_budget
from cure_jax.parallel.precision import certification_precision

VERIFIED, FALSIFIED, UNKNOWN = "verified", "falsified", "unknown"
BOX = "box"  # the norm of a plain box input set
# A counterexample candidate is pulled this fraction towards the set's
# centre before the check, so that float32 rounding cannot put it outside.
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
    candidate_steps: sign-gradient steps that pull each domain's
      counterexample candidates into the domain (0: the relaxed bound's
      minimizers only).
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
  candidate_steps: int = 0


class DisjunctiveSpec(NamedTuple):
  """Unsafe outputs: ∃ disjunct D ∀ k ∈ D: c_k·y + d_k ≥ 0.

  Attributes:
    coeffs: [S, K] rows c_k over the outputs.
    offsets: [S] constants d_k.
    owner: [S] the disjunct of each row, in 0, …, num_disjuncts − 1.
    num_disjuncts: m; every disjunct needs at least one row.
  """

  coeffs: np.ndarray
  offsets: np.ndarray
  owner: np.ndarray
  num_disjuncts: int


def disjunctive_spec(coeffs, offsets, owner) -> DisjunctiveSpec:
  """Checks and packs rows (see `DisjunctiveSpec`).

  Raises:
    ValueError: mismatched shapes, no rows, or a disjunct index without rows
      (such a disjunct holds everywhere: nothing to refute).
  """
  coeffs = np.asarray(coeffs, np.float32)
  offsets = np.asarray(offsets, np.float32).reshape(-1)
  owner = np.asarray(owner, np.int64).reshape(-1)
  if coeffs.ndim != 2 or not len(coeffs):
    raise ValueError(f"coeffs must be [S, K] with S >= 1; got {coeffs.shape}.")
  if offsets.shape != (len(coeffs),) or owner.shape != (len(coeffs),):
    raise ValueError(
      f"offsets {offsets.shape} and owner {owner.shape} must both be "
      f"[{len(coeffs)}], one per row of coeffs."
    )
  count = int(owner.max()) + 1
  if owner.min() < 0 or len(np.unique(owner)) != count:
    raise ValueError(
      f"owner must number the disjuncts 0, …, m − 1, each with a row; got "
      f"{sorted(set(owner.tolist()))}."
    )
  return DisjunctiveSpec(coeffs, offsets, owner, count)


def margin_rows(label: int, num_classes: int) -> np.ndarray:
  """C with rows e_y − e_j, j ≠ y in increasing order: [K − 1, K]."""
  others = [j for j in range(num_classes) if j != label]
  rows = np.zeros((num_classes - 1, num_classes), np.float32)
  rows[:, label] = 1.0
  rows[np.arange(num_classes - 1), others] = -1.0
  return rows


def margin_spec(label: int, num_classes: int) -> DisjunctiveSpec:
  """Unsafe: z_j − z_y ≥ 0 for some j ≠ y, each j its own disjunct (rows in
  increasing j): the negated `margin_rows`."""
  count = num_classes - 1
  return DisjunctiveSpec(
    -margin_rows(label, num_classes),
    np.zeros(count, np.float32),
    np.arange(count),
    count,
  )


def box_set(lower, upper) -> splits.InputSet:
  """The box [lower, upper] (flattened) as an `InputSet` (l∞, its centre the
  midpoint: the box's own corners bound it)."""
  lower = jnp.asarray(lower, jnp.float32).reshape(-1)
  upper = jnp.asarray(upper, jnp.float32).reshape(-1)
  center = (lower + upper) / 2
  return splits.InputSet(
    center, jnp.max(upper - center, initial=0.0), math.inf, lower, upper
  )


def _masks(spec: DisjunctiveSpec):
  """[m, S] bool: row k belongs to disjunct D."""
  return np.arange(spec.num_disjuncts)[:, None] == spec.owner[None, :]


def _disjunct_values(rows_value, mask):
  """max_{k∈D} value_k per disjunct: [..., S] -> [..., m]."""
  return jnp.max(jnp.where(mask, rows_value[..., None, :], -jnp.inf), axis=-1)


class _Pool(NamedTuple):
  """Domains, stacked on a leading axis (numpy, host side)."""

  splits: tuple[np.ndarray, ...]  # [N, n_k] in {−1, 0, 1}
  alphas: tuple[np.ndarray, ...]  # [N, S, n_k]
  betas: tuple[np.ndarray, ...]  # [N, S, n_k]
  best: np.ndarray  # [N, S] lower bounds of a_k·f + b_k
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
  candidate_value: jax.Array  # [D] min_D max_k a_k·f + b_k at the candidate
  candidate: jax.Array  # [D, n_0]


class _Problem(NamedTuple):
  """The arrays one search bounds (jit arguments)."""

  center: jax.Array
  eps: jax.Array
  lower: jax.Array
  upper: jax.Array
  rows: jax.Array  # [S, K] safe rows a_k = −c_k
  offsets: jax.Array  # [S] b_k = −d_k
  mask: jax.Array  # [m, S]
  done: jax.Array  # [m] disjuncts refuted on the whole set


class Verifier:
  """A network's jitted bounding step and intervals (one per network and
  norm), compiled once per shape and reused across searches."""

  def __init__(self, chain: splits.ReluChain, norm: str, settings: BaBSettings):
    self.chain = chain
    self.norm = norm
    powers = {BOX: math.inf, "linf": math.inf, "l2": 2.0, "l1": 1.0}
    if norm not in powers:
      raise ValueError(f"unknown norm {norm!r}: use one of {tuple(powers)}.")
    self.p = powers[norm]
    self.settings = settings
    self.widths = chain.widths[1:-1]
    self.compiled: dict[tuple, Any] = {}
    self.compile_seconds = 0.0
    self.max_domains = 2 * settings.batch_domains

  def _set(self, problem: _Problem) -> splits.InputSet:
    return splits.InputSet(
      problem.center, problem.eps, self.p, problem.lower, problem.upper
    )

  def _intervals(self, problem):
    return splits.crown_intervals(self.chain, self._set(problem))

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

  def _inside(self, problem, points):
    """Points moved into the input set (and slightly towards its centre)."""
    if self.norm == BOX:
      inside = jnp.clip(points, problem.lower, problem.upper)
    else:
      inside = attacks.project(
        points,
        jnp.broadcast_to(problem.center, points.shape),
        problem.eps,
        norm=self.norm,
        domain=(0.0, 1.0),
      )
      inside = jnp.clip(inside, problem.lower, problem.upper)
    return problem.center + (inside - problem.center) * (1.0 - _SHRINK)

  def _unsafe_value(self, problem, x):
    """min_D max_{k∈D} a_k·f(x) + b_k: ≤ 0 where f(x) is unsafe."""
    values = problem.rows @ splits.chain_logits(self.chain, x) + problem.offsets
    return jnp.min(_disjunct_values(values, problem.mask))

  def _split_violation(self, x, split):
    """Σ_k,i max(−s_k,i z_k,i(x), 0): how far x is from the domain."""
    value, total = x, 0.0
    for segment, s in zip(self.chain.segments[:-1], split):
      z = segment(value)
      total = total + jnp.sum(jnp.maximum(-s * z, 0.0))
      value = jax.nn.relu(z)
    return total

  def _guided(self, problem, split, points):
    """Points after ``candidate_steps`` of sign-gradient descent on
    unsafe value + split violation, projected into the set: the relaxed
    bound's minimizers seldom satisfy the domain's splits; the descent pulls
    them into the domain (where the bound says the unsafe value is lowest)
    and down the unsafe value."""
    count = self.settings.candidate_steps
    width = problem.upper - problem.lower
    objective = lambda x: (
      self._unsafe_value(problem, x) + self._split_violation(x, split)
    )
    gradient = jax.vmap(jax.grad(objective))

    def descend(x, t):
      size = 0.25 * (0.02 ** (t / max(count - 1, 1)))  # 1/4 to 1/200 width
      return self._inside(
        problem, x - size * width * jnp.sign(gradient(x))
      ), None

    return jax.lax.scan(descend, points, jnp.arange(count))[0]

  def _candidates(self, problem, split, points):
    """The candidate with the least unsafe value, and that value: the
    relaxed bound's minimizers and, with ``candidate_steps``, the points
    `_guided` reaches from them."""
    inside = self._inside(problem, points)
    if self.settings.candidate_steps:
      inside = jnp.concatenate([inside, self._guided(problem, split, inside)])
    unsafe = jax.vmap(lambda x: self._unsafe_value(problem, x))(inside)
    worst = jnp.argmin(unsafe)
    return unsafe[worst], inside[worst]

  def step(self, steps, problem: _Problem, intervals, pool):
    """Optimizes (α, β) of every domain; see `_Step`. Jitted per shape."""
    box = self._set(problem)
    alpha_opt = optax.adam(self.settings.alpha_lr)
    beta_opt = optax.adam(self.settings.beta_lr)
    done_rows = jnp.any(problem.mask & problem.done[:, None], axis=0)

    def one_domain(split, alphas, betas, best):
      def loss(params):
        bound = self._domain_bound(box, problem.rows, intervals, split, *params)
        return -jnp.sum(jnp.where(done_rows, 0.0, bound.lower)), bound.lower

      def update(carry, _):
        params, states, best = carry
        (_, lower), grads = jax.value_and_grad(loss, has_aux=True)(params)
        best = jnp.maximum(best, lower + problem.offsets)
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
      bound = self._domain_bound(box, problem.rows, intervals, split, *params)
      best = jnp.maximum(best, bound.lower + problem.offsets)
      refuted = _disjunct_values(best, problem.mask) > 0
      open_disjuncts = ~problem.done & ~refuted
      open_rows = jnp.any(problem.mask & open_disjuncts[:, None], axis=0)
      branch, can_split = self._branch(bound, intervals, split, open_rows)
      value, point = self._candidates(problem, split, bound.minimizer)
      return _Step(*params, best, branch, can_split, value, point)

    return jax.vmap(one_domain)(pool.splits, pool.alphas, pool.betas, pool.best)

  def call(self, key, fn, *args):
    """``fn(*args)`` by an executable compiled once per ``key`` and the
    arguments' shapes; its compilation time is added to
    ``compile_seconds``."""
    key = (key, _shapes(args))
    if key not in self.compiled:
      begin = time.perf_counter()
      with certification_precision():
        self.compiled[key] = bounds.jit(fn).lower(*args).compile()
      self.compile_seconds += time.perf_counter() - begin
    with certification_precision():
      return jax.block_until_ready(self.compiled[key](*args))

  def bound_intervals(self, problem: _Problem):
    """CROWN intervals of every ReLU input over the input set."""
    return self.call("intervals", self._intervals, problem)

  def run_step(self, steps, problem, intervals, pool, budget):
    """`step` on a pool of any size, padded to a power of two (one
    executable per size); over the memory budget, the pool is bounded in
    chunks of the next smaller size (and later steps take fewer domains).
    Returns numpy arrays."""
    size = len(pool.best)
    padded = _padded_size(size)
    rows_taken = np.concatenate([np.arange(size), np.zeros(padded - size, int)])
    args = (problem, intervals, _take(pool, rows_taken))
    key = ("step", steps, padded, _shapes(args))
    if key not in self.compiled:
      begin = time.perf_counter()
      with certification_precision():
        compiled = (
          bounds.jit(functools.partial(self.step, steps)).lower(*args).compile()
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
            f"{budget / memory_budget.GIB:.3g} GiB; raise the memory budget "
            f"(memory_budget_gb) or turn branch and bound off."
          )
        half = max(1, padded // 4)  # the next smaller executable size
        self.max_domains = min(self.max_domains, half)
        return _concat(
          [
            self.run_step(
              steps,
              problem,
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


def _shapes(args) -> str:
  return str(
    jax.tree.map(
      lambda a: (np.shape(a), str(getattr(a, "dtype", type(a)))), args
    )
  )


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


class SearchResult(NamedTuple):
  """Outcome of one search.

  Attributes:
    status: `VERIFIED`, `FALSIFIED` or `UNKNOWN`.
    lower: the least, over open domains and open disjuncts, of a disjunct's
      best row bound min a_k·f + b_k (+inf when verified; the root's where
      falsified before any split).
    counterexample: for `FALSIFIED`, the confirmed flat point; else None.
    domains: domains bounded.
    seconds: time spent (compilation excluded).
    out_of_time: `UNKNOWN` because the time limit was reached.
  """

  status: str
  lower: float
  counterexample: np.ndarray | None
  domains: int
  seconds: float
  out_of_time: bool = False


def search(
  verifier: Verifier,
  input_set: splits.InputSet,
  spec: DisjunctiveSpec,
  confirm: Callable[[np.ndarray], bool],
  *,
  seconds: float,
  after_root: Callable[[], np.ndarray | None] | None = None,
) -> SearchResult:
  """Branch and bound of ``spec`` over ``input_set`` (module docstring).

  Args:
    verifier: the network's `Verifier` (its norm the set's: `BOX` for a box).
    input_set: the flat input set; for `BOX` its centre must lie in the box.
    spec: the unsafe outputs.
    confirm: whether a flat candidate is a counterexample — the caller's
      plain forward pass of the network and membership test of the set.
    seconds: the time limit, compilation excluded.
    after_root: optional search run once the root is bounded and not
      refuted (e.g. PGD); a point it returns is checked by ``confirm``.

  Returns:
    A `SearchResult`.

  Raises:
    MemoryBudgetError: one domain does not fit the memory budget.
  """
  settings = verifier.settings
  budget = memory_budget.budget_bytes(settings.memory_budget_gb)
  clock = _Clock(seconds, verifier)
  mask = _masks(spec)
  problem = _Problem(
    input_set.center,
    jnp.float32(input_set.eps),
    input_set.lower,
    input_set.upper,
    jnp.asarray(-spec.coeffs, jnp.float32),
    jnp.asarray(-spec.offsets, jnp.float32),
    jnp.asarray(mask),
    jnp.zeros((spec.num_disjuncts,), bool),
  )
  intervals = verifier.bound_intervals(problem)
  num_rows = len(spec.owner)
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
  refutation = lambda best: np.max(
    np.where(mask, best[..., None, :], -np.inf), -1
  )
  out = verifier.run_step(settings.root_steps, problem, intervals, root, budget)
  if out.candidate_value[0] <= 0 and confirm(out.candidate[0]):
    return clock.result(
      FALSIFIED, float(refutation(out.best[0]).min()), out.candidate[0], 1
    )
  done = refutation(out.best[0]) > 0
  if done.all():
    return clock.result(VERIFIED, math.inf, None, 1)
  if after_root is not None:
    point = after_root()
    if point is not None and confirm(point):
      return clock.result(
        FALSIFIED, float(refutation(out.best[0]).min()), point, 1
      )
  problem = problem._replace(done=jnp.asarray(done))
  pool = _pool_from(root, out)
  count = 1
  pool_budget = budget // 4  # the open domains live in host memory
  open_lower = lambda best: np.where(done, np.inf, refutation(best)).min(-1)
  while len(pool.best) and not clock.expired() and _nbytes(pool) <= pool_budget:
    step_start = time.perf_counter() - verifier.compile_seconds
    lowest = open_lower(pool.best)
    order = np.argsort(lowest, kind="stable")
    take = min(len(order), max(1, verifier.max_domains // 2))
    picked, rest = _take(pool, order[:take]), _take(pool, order[take:])
    children = _children(picked, verifier.widths)
    out = verifier.run_step(
      settings.steps, problem, intervals, children, budget
    )
    count += len(children.best)
    worst = int(np.argmin(out.candidate_value))
    if out.candidate_value[worst] <= 0 and confirm(out.candidate[worst]):
      return clock.result(
        FALSIFIED, float(lowest.min()), out.candidate[worst], count
      )
    children = _pool_from(children, out)
    keep = open_lower(children.best) <= 0  # some open disjunct unrefuted
    pool = _concat([rest, _take(children, keep)])
    clock.last_step = (
      time.perf_counter() - verifier.compile_seconds - step_start
    )
  if not len(pool.best):
    return clock.result(VERIFIED, math.inf, None, count)
  return clock.result(
    UNKNOWN, float(open_lower(pool.best).min()), None, count
  )._replace(out_of_time=clock.expired())


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
  """A search's time limit; the verifier's compilation time is excluded."""

  def __init__(self, seconds: float, verifier: Verifier):
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

  def result(self, status, lower, counterexample, domains) -> SearchResult:
    return SearchResult(status, lower, counterexample, domains, self.elapsed())
