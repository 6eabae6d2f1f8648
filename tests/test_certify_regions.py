"""Tests for cure_jax/certify/regions.py and region_attacks.py.

Certificates over patches and geometric transformations are checked against
brute force: a certified point is never broken by any patch at any position
(every vertex of the patch box, PGD on the patch values) nor by a dense grid
of transformations; the driver agrees with bounding every region directly,
whatever its chunk size.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import bounds
from cure_jax.certify import region_attacks, regions
from cure_jax.models import ConvNet
from cure_jax.perturbations import geometric_bounds, parameters, patches

NUM_CLASSES = 3
SIDE = 8
MISCLASSIFIED = np.arange(2)
MODEL = ConvNet(
  num_classes=NUM_CLASSES,
  conv_widths=(4,),
  conv_strides=(2,),
  dense_widths=(16,),
  batch_norm=True,
)


@pytest.fixture(scope="module")
def problem():
  """Random weights, 8×8 images; labels = predictions but 2 flipped."""
  x = jax.random.uniform(jax.random.key(3), (24, SIDE, SIDE, 1))
  variables = MODEL.init(jax.random.key(2), x, train=False)
  stats = jax.tree.map(lambda s: s + 0.1, variables["batch_stats"])
  variables = dict(variables, batch_stats=stats)
  labels = np.array(jnp.argmax(MODEL.apply(variables, x, train=False), -1))
  labels[MISCLASSIFIED] = (labels[MISCLASSIFIED] + 1) % NUM_CLASSES
  return variables, x, labels


def _patch_threat(size):
  return regions.RegionThreat(
    f"patch_{size}",
    patches.PatchBoxes(size),
    patches.patch_positions(SIDE, SIDE, size),
  )


def _geometric_threat(family, subintervals, **ranges):
  box = parameters.family_box(family, parameters.GeometricRanges(**ranges))
  return regions.RegionThreat(
    family,
    geometric_bounds.region_boxes,
    parameters.split_box(box, subintervals),
  ), box


@pytest.fixture(scope="module")
def patch_1(problem):
  variables, x, labels = problem
  return regions.certify_regions(
    MODEL.apply,
    variables,
    x,
    labels,
    _patch_threat(1),
    num_classes=NUM_CLASSES,
    rows_per_batch=40,
  )


@functools.cache
def _margins_of(transform):
  """``transform``'s lower bounds of MODEL's margins over a box, jitted: one
  compilation per shape, where eagerly every point dispatches each operation
  on its own."""
  return jax.jit(
    lambda variables, box, spec: (
      transform(MODEL.apply)(variables, box, train=False, spec=spec).lower
    )
  )


def _predict(variables, images):
  return np.asarray(jnp.argmax(MODEL.apply(variables, images, train=False), -1))


def test_some_points_certify_and_some_do_not(patch_1, problem):
  result, reports = patch_1
  assert 0 < result.certified.sum() < len(result.certified) - 2
  assert not result.certified[MISCLASSIFIED].any()
  assert np.all(result.regions_bounded[MISCLASSIFIED] == 0)
  assert np.all(result.regions_bounded[result.certified] == (SIDE**2))
  assert np.all(result.worst_margin[result.certified] > 0)
  assert [r.method for r in reports] == list(regions.REGION_METHODS)
  assert sum(r.certified for r in reports) == result.certified.sum()
  del problem


def test_a_certified_point_survives_every_patch_vertex_and_pgd(
  patch_1, problem
):
  variables, x, labels = problem
  result, _ = patch_1
  points = np.flatnonzero(result.certified)
  positions = patches.patch_positions(SIDE, SIDE, 1)
  for value in (0.0, 1.0, 0.5):
    for i in points:
      rows = jnp.repeat(x[i : i + 1], len(positions), axis=0)
      patched = patches.apply_patch(
        rows, positions, jnp.full_like(rows, value), 1
      )
      assert np.all(_predict(variables, patched) == labels[i])
  robust = region_attacks.patch_attack(
    MODEL.apply,
    variables,
    x,
    labels,
    size=1,
    positions=positions,
    steps=10,
    rows_per_batch=100,
  )
  assert np.all(robust[result.certified])
  # The attack breaks some uncertified point, so it is not vacuous.
  assert not np.all(robust[~result.certified])


def test_two_by_two_patch_certificates_survive_all_sixteen_vertices(problem):
  variables, x, labels = problem
  result, _ = regions.certify_regions(
    MODEL.apply,
    variables,
    x,
    labels,
    _patch_threat(2),
    num_classes=NUM_CLASSES,
    rows_per_batch=64,
  )
  positions = patches.patch_positions(SIDE, SIDE, 2)
  mask = np.asarray(patches.patch_mask(SIDE, SIDE, 2, positions))
  for i in np.flatnonzero(result.certified):
    for vertex in itertools.product((0.0, 1.0), repeat=4):
      values = np.zeros((len(positions), SIDE, SIDE, 1), np.float32)
      # Fill the 4 window pixels of every position with the vertex.
      for k, (r, c) in enumerate(positions):
        values[k, r : r + 2, c : c + 2, 0] = np.reshape(vertex, (2, 2))
      rows = np.repeat(np.asarray(x[i : i + 1]), len(positions), axis=0)
      patched = rows * (1 - mask) + values * mask
      assert np.all(_predict(variables, jnp.asarray(patched)) == labels[i])


def test_agrees_with_bounding_every_region_directly(patch_1, problem):
  variables, x, labels = problem
  result, _ = patch_1
  positions = patches.patch_positions(SIDE, SIDE, 1)
  for i in range(len(labels)):
    point = np.full(len(positions), i)
    box = patches.patch_boxes(x, point, positions, 1)
    spec = bounds.margin_spec(jnp.asarray(labels[point]), NUM_CLASSES)
    margins = [
      np.asarray(_margins_of(t)(variables, box, spec)).min(-1)
      for t in (bounds.ibp, bounds.crown_ibp)
    ]
    every_region = np.all(np.maximum(*margins) > 0)
    correct = _predict(variables, x[i : i + 1])[0] == labels[i]
    assert result.certified[i] == (correct and every_region), i
    if result.certified[i]:
      needs_crown = np.any(margins[0] <= 0)
      assert result.method_index[i] == int(needs_crown)


@pytest.mark.parametrize("rows_per_batch", [7, 5000])
def test_chunk_size_does_not_change_any_certificate(
  patch_1, problem, rows_per_batch
):
  variables, x, labels = problem
  expected, _ = patch_1
  result, _ = regions.certify_regions(
    MODEL.apply,
    variables,
    x,
    labels,
    _patch_threat(1),
    num_classes=NUM_CLASSES,
    rows_per_batch=rows_per_batch,
  )
  np.testing.assert_array_equal(result.certified, expected.certified)
  np.testing.assert_array_equal(result.method_index, expected.method_index)


def test_a_second_stage_only_adds_certificates(patch_1, problem):
  variables, x, labels = problem
  cascade, _ = patch_1
  ibp_only, _ = regions.certify_regions(
    MODEL.apply,
    variables,
    x,
    labels,
    _patch_threat(1),
    num_classes=NUM_CLASSES,
    methods=("ibp",),
    rows_per_batch=40,
  )
  assert np.all(cascade.certified[ibp_only.certified])
  assert cascade.certified.sum() > ibp_only.certified.sum()


@pytest.mark.parametrize(
  "family, subintervals, ranges",
  [
    ("rotation", 4, dict(rotation=1.0)),
    ("translation", 4, dict(translation=0.05)),
    ("brightness_contrast", 2, dict(brightness=0.05, contrast=0.05)),
  ],
)
def test_geometric_certificates_survive_a_dense_grid(
  problem, family, subintervals, ranges
):
  variables, x, labels = problem
  threat, box = _geometric_threat(family, subintervals, **ranges)
  result, _ = regions.certify_regions(
    MODEL.apply,
    variables,
    x,
    labels,
    threat,
    num_classes=NUM_CLASSES,
    rows_per_batch=32,
  )
  assert result.certified.any()
  points = 41 if len(parameters.active_parameters(box)) == 1 else 9
  grid = parameters.parameter_grid(box, points)
  robust = region_attacks.grid_attack(
    MODEL.apply, variables, x, labels, grid=grid, rows_per_batch=100
  )
  assert np.all(robust[result.certified])
  assert not robust[MISCLASSIFIED].any()


def test_row_chunks_visit_points_in_order_and_skip_finished_ones():
  finished = np.zeros(5, bool)
  chunks = regions.row_chunks(np.array([0, 2, 3]), 4, 3, finished)
  point, region = next(chunks)
  np.testing.assert_array_equal(point, [0, 0, 0])
  np.testing.assert_array_equal(region, [0, 1, 2])
  finished[2] = True  # Point 2 fails: its rows are dropped.
  rest = list(chunks)
  points = np.concatenate([p for p, _ in rest])
  regions_left = np.concatenate([r for _, r in rest])
  np.testing.assert_array_equal(points, [0, 3, 3, 3, 3])
  np.testing.assert_array_equal(regions_left, [3, 0, 1, 2, 3])
  assert all(len(p) <= 3 for p, _ in rest)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(methods=("ibp", "alpha_crown")), "Unknown region bound method"),
    (dict(methods="ibp"), "non-empty sequence"),
    (dict(rows_per_batch=0), "rows_per_batch"),
  ],
)
def test_bad_arguments_explain_the_fix(problem, kwargs, message):
  variables, x, labels = problem
  with pytest.raises(ValueError, match=message):
    regions.certify_regions(
      MODEL.apply,
      variables,
      x,
      labels,
      _patch_threat(1),
      num_classes=NUM_CLASSES,
      **kwargs,
    )


def test_failing_region_is_one_whose_bound_fails(patch_1, problem):
  variables, x, labels = problem
  result, _ = patch_1
  positions = patches.patch_positions(SIDE, SIDE, 1)
  correct = _predict(variables, x) == labels
  assert np.all(result.failing_region[result.certified | ~correct] == -1)
  for i in np.flatnonzero(correct & ~result.certified):
    region = result.failing_region[i]
    assert 0 <= region < len(positions)
    box = patches.patch_boxes(
      x, np.array([i]), positions[region : region + 1], 1
    )
    spec = bounds.margin_spec(jnp.asarray(labels[i : i + 1]), NUM_CLASSES)
    for transform in (bounds.ibp, bounds.crown_ibp):
      assert np.min(_margins_of(transform)(variables, box, spec)) <= 0
  # Starting the attack there never breaks a certified point.
  hinted = region_attacks.patch_attack(
    MODEL.apply,
    variables,
    x,
    labels,
    size=1,
    positions=positions,
    steps=10,
    rows_per_batch=100,
    first_positions=result.failing_region,
  )
  assert np.all(hinted[result.certified])
