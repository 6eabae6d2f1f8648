"""Certification over threat models that are unions of input boxes.

Patches and geometric transformations are not l_p balls: a test point x is
certified when the margins are provably positive over *every* region of its
threat model — every patch position (`perturbations.patches`), every sub-box
of the transformation parameters (`perturbations.geometric_bounds`). Each
region is an input `Box`, built from the point and a *region parameter* by a
`RegionThreat`, so the work is a list of (point, region) rows.

Rows are bounded in fixed-size chunks (one compilation per method), point
after point, by the cascade ``methods``: IBP on the chunk, then each later
stage on the rows left (gathered to the sizes of `cascade.gather_size`); the
last stage takes them in small pieces, worst IBP margin first. A point fails
as soon as one of its regions fails every stage, and its remaining rows are
dropped, so an uncertifiable point costs little; a certified point costs all
its regions. The stage reported for a certified point is the most expensive one
any of its regions needed.
"""

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax import bounds
from cure_jax.certify import stage_timing
from cure_jax.certify.cascade import (
  NOT_CERTIFIED,
  StageReport,
  gather_size,
  predict,
)
from cure_jax.models.call_adapter import adapt_apply
from cure_jax.parallel.precision import cast_floating
from cure_jax.types import PyTree

REGION_METHODS = ("ibp", "crown_ibp")
TRANSFORMS = {
  "ibp": bounds.ibp,
  "crown_ibp": functools.partial(bounds.crown_ibp, bound="lower"),
}


class RegionThreat(NamedTuple):
  """A threat model as regions: ``boxes(images, point, region) -> Box``.

  ``name`` is the report column (``'patch_2'``, ``'rotation'``). ``boxes``
  must be hashable and traceable (a static argument of `jax.jit`: a
  module-level function or a NamedTuple with ``__call__``), mapping images
  [B, ...], point [R] int and region parameters (leaves [R, ...]) to the
  `Box` [R, ...] of each row. ``regions`` is a pytree of numpy arrays with a
  leading axis S, one entry per region.
  """

  name: str
  boxes: Callable[..., bounds.Box]
  regions: PyTree

  @property
  def num_regions(self) -> int:
    return int(np.shape(jax.tree.leaves(self.regions)[0])[0])


class RegionResult(NamedTuple):
  """Per-point outcome of `certify_regions` (numpy arrays [B]).

  Attributes:
    method_index: the most expensive stage any region needed
      (`NOT_CERTIFIED` where the point is not certified).
    regions_bounded: regions bounded before the point failed (all for a
      certified point; 0 for a misclassified one).
    worst_margin: min over the bounded regions of the last stage's lower
      bound on min_j z_y − z_j (−∞ where nothing was bounded).
    failing_region: the region whose bound failed the point, where an
      attack should start (−1 if certified or misclassified).
  """

  certified: np.ndarray
  method_index: np.ndarray
  regions_bounded: np.ndarray
  worst_margin: np.ndarray
  failing_region: np.ndarray


def _region_min_margin(
  apply_fn,
  boxes_fn,
  method,
  num_classes,
  variables,
  images,
  labels,
  point,
  region,
):
  """[R] min_j lower bound of z_y − z_j over each row's box."""
  box = boxes_fn(images, point, region)
  spec = bounds.margin_spec(jnp.take(labels, point), num_classes)
  margins = TRANSFORMS[method](apply_fn)(variables, box, train=False, spec=spec)
  return jnp.min(margins.lower, axis=-1)


_region_min_margin_jit = bounds.jit(_region_min_margin, static_argnums=range(4))


def row_chunks(
  points: np.ndarray, num_regions: int, rows: int, finished: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(point, region) rows, at most ``rows`` at a time, point after point.

  Rows of points marked in ``finished`` (read afresh before each chunk, so
  the caller may mark points between chunks) are skipped. Yields int32
  (point [n], region [n]), 1 <= n <= rows.
  """
  point = np.repeat(np.asarray(points, np.int32), num_regions)
  region = np.tile(np.arange(num_regions, dtype=np.int32), len(points))
  start = 0
  while start < len(point):
    taken_p, taken_r, count = [], [], 0
    while count < rows and start < len(point):
      stop = min(start + rows - count, len(point))
      keep = ~finished[point[start:stop]]
      taken_p.append(point[start:stop][keep])
      taken_r.append(region[start:stop][keep])
      count += int(keep.sum())
      start = stop
    if count:
      yield np.concatenate(taken_p), np.concatenate(taken_r)


def _pad(index: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([index, np.full(size - len(index), index[0])])


class _Stages:
  """Runs one stage on gathered rows and keeps its `StageReport` totals."""

  def __init__(
    self,
    apply_fn,
    threat,
    methods,
    num_classes,
    variables,
    images,
    labels,
    rows_per_batch,
  ):
    # A chunk of consecutive rows spans at most ceil(rows / S) + 1 points.
    self.slots = min(len(labels), -(-rows_per_batch // threat.num_regions) + 1)
    self.apply_fn, self.threat, self.methods = apply_fn, threat, methods
    self.num_classes, self.variables = num_classes, variables
    self.images, self.labels = images, labels
    self.totals = [
      dict(points=0, rows=0, certified=0, compile_seconds=0.0, run_seconds=0.0)
      for _ in methods
    ]

  def run(self, stage, point, region, size):
    """Min margins of the rows (point, region), computed on ``size`` rows.

    Only the chunk's images are passed (padded to a fixed count, so the
    stage compiles once): region builders may do per-image work (the
    geometric window tables).
    """
    rows = _pad(np.arange(len(point)), size)
    used, local = np.unique(point, return_inverse=True)
    slots = _pad(used, self.slots)
    params = jax.tree.map(lambda leaf: leaf[region[rows]], self.threat.regions)
    timed = stage_timing.compile_and_run(
      _region_min_margin_jit,
      (self.apply_fn, self.threat.boxes, self.methods[stage], self.num_classes),
      (
        self.variables,
        jnp.take(self.images, slots, axis=0),
        jnp.take(self.labels, slots),
        jnp.asarray(local[rows], jnp.int32),
        params,
      ),
    )
    margin = np.array(timed.value)[: len(point)]
    total = self.totals[stage]
    total["points"] += len(np.unique(point))
    total["rows"] += size
    total["compile_seconds"] += timed.compile_seconds
    total["run_seconds"] += timed.run_seconds
    return margin

  def reports(self):
    return tuple(StageReport(m, **t) for m, t in zip(self.methods, self.totals))


def _mark_failed(point, region, failing_rows, failed, failing) -> None:
  """Marks the points of ``failing_rows``, noting a region for new ones."""
  rows = np.flatnonzero(failing_rows & (failing[point] < 0) & ~failed[point])
  failing[point[rows[::-1]]] = region[rows[::-1]]  # the first row wins
  failed[point[failing_rows]] = True


def _last_stage(
  stages: _Stages,
  stage: int,
  point,
  region,
  margin,
  row_stage,
  rows_per_batch: int,
  failed: np.ndarray,
  failing: np.ndarray,
) -> None:
  """The last stage on the chunk's failing rows, worst first, in pieces.

  A row the last stage cannot certify fails its point, so the failing rows
  are bounded in pieces of the smallest gather size, those with the most
  negative margin so far first (the likeliest to fail again), and a point's
  rows are dropped once it has failed. Updates ``margin``, ``row_stage``,
  ``failed`` and ``failing`` in place.
  """
  piece = gather_size(1, rows_per_batch)
  pending = np.flatnonzero(margin <= 0)
  order = pending[np.argsort(margin[pending], kind="stable")]
  while len(order):
    order = order[~failed[point[order]]]
    take, order = order[:piece], order[piece:]
    if not len(take):
      break
    margin[take] = stages.run(stage, point[take], region[take], piece)
    row_stage[take] = stage
    _mark_failed(point[take], region[take], margin[take] <= 0, failed, failing)


def _check(threat: RegionThreat, methods, rows_per_batch):
  if isinstance(methods, str) or not methods:
    raise ValueError(
      f"methods must be a non-empty sequence of names from "
      f"{REGION_METHODS}, got {methods!r}."
    )
  unknown = [m for m in methods if m not in REGION_METHODS]
  if unknown:
    raise ValueError(
      f"Unknown region bound method(s) {unknown}: use {REGION_METHODS}."
    )
  if not isinstance(rows_per_batch, int) or rows_per_batch < 1:
    raise ValueError(
      f"rows_per_batch must be an int >= 1, got {rows_per_batch!r}."
    )
  if threat.num_regions < 1:
    raise ValueError(f"threat {threat.name!r} has no regions.")


def certify_regions(
  apply_fn,
  variables: PyTree,
  images,
  labels,
  threat: RegionThreat,
  *,
  num_classes: int,
  methods: Sequence[str] = REGION_METHODS,
  rows_per_batch: int = 512,
) -> tuple[RegionResult, tuple[StageReport, ...]]:
  """Certifies each point over every region of ``threat``, in float32.

  ``apply_fn(variables, x, train=False) -> logits [B, K]``, or a Flax
  module, ``train`` optional (`models.call_adapter`), must be the same
  object on every call (jit caches on it); ``methods`` come from
  `REGION_METHODS`, cheapest first. Returns the `RegionResult` and one
  `StageReport` per stage (``points`` counts (point, stage) visits,
  ``certified`` the points whose most expensive stage it was).
  """
  _check(threat, methods, rows_per_batch)
  apply_fn = adapt_apply(apply_fn)
  methods = tuple(methods)
  variables = cast_floating(variables, jnp.float32)
  images = jnp.asarray(images, jnp.float32)
  labels_np = np.asarray(labels, np.int32)
  batch = len(labels_np)
  correct = (
    np.asarray(predict(apply_fn, variables, images, num_classes)) == labels_np
  )
  failed = ~correct
  failing = np.full(batch, -1, np.int64)
  needed = np.full(batch, NOT_CERTIFIED, np.int32)
  bounded = np.zeros(batch, np.int64)
  worst = np.full(batch, np.inf, np.float32)
  stages = _Stages(
    apply_fn,
    threat,
    methods,
    num_classes,
    variables,
    images,
    jnp.asarray(labels_np),
    rows_per_batch,
  )
  for point, region in row_chunks(
    np.flatnonzero(correct), threat.num_regions, rows_per_batch, failed
  ):
    margin = stages.run(0, point, region, rows_per_batch)
    row_stage = np.zeros(len(point), np.int32)
    for stage in range(1, len(methods) - 1):
      pending = np.flatnonzero(margin <= 0)
      if not len(pending):
        break
      size = gather_size(len(pending), rows_per_batch)
      margin[pending] = stages.run(stage, point[pending], region[pending], size)
      row_stage[pending] = stage
    if len(methods) > 1:
      _last_stage(
        stages,
        len(methods) - 1,
        point,
        region,
        margin,
        row_stage,
        rows_per_batch,
        failed,
        failing,
      )
    np.add.at(bounded, point, 1)
    np.minimum.at(worst, point, margin)
    np.maximum.at(needed, point, row_stage)
    _mark_failed(point, region, margin <= 0, failed, failing)
  certified = correct & ~failed
  worst[~correct] = -np.inf
  method_index = np.where(certified, needed, NOT_CERTIFIED).astype(np.int32)
  reports = stages.reports()
  reports = tuple(
    r._replace(certified=int(np.sum(method_index == i)))
    for i, r in enumerate(reports)
  )
  return RegionResult(certified, method_index, bounded, worst, failing), reports
