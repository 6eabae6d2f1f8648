"""Interval bounds of transformed images contain every transformation in range.

For each family (and all combined), transformations with parameters sampled
on a dense grid and at random inside a (sub-)box never leave the interval
computed for that box; splitting the box only tightens the bounds; bad
ranges are refused with a clear error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.perturbations import parameters
from cure_jax.perturbations.geometric_bounds import transformed_image_bounds
from cure_jax.perturbations.parameters import (
  GeometricRanges,
  TransformParams,
  family_box,
  parameter_grid,
  split_box,
)
from cure_jax.perturbations.warps import transform_images

TOL = 1e-5


def _images(seed=0, batch=2, size=10):
  x = jax.random.uniform(jax.random.key(seed), (batch, size, size, 1))
  # Some structure, like digits: a bright square on a dark background.
  return x.at[:, 3:7, 3:7].set(1.0).at[:, :2].set(0.0)


def _random_params(box, key, count):
  keys = jax.random.split(key, len(parameters.PARAMETERS))
  values = {}
  for name, k in zip(parameters.PARAMETERS, keys):
    lo, hi = getattr(box.lower, name), getattr(box.upper, name)
    values[name] = np.asarray(
      jax.random.uniform(k, (count,), minval=lo, maxval=hi)
    )
  return TransformParams(**values)


def _assert_inside(images, box, params):
  bounds = transformed_image_bounds(images, box)
  count = np.shape(params.rotation)[0]
  for i in range(count):
    theta = TransformParams(*(p[i] for p in params))
    moved = np.asarray(transform_images(images, theta))
    assert np.all(moved >= np.asarray(bounds.lower) - TOL), theta
    assert np.all(moved <= np.asarray(bounds.upper) + TOL), theta


@pytest.mark.parametrize("family", sorted(parameters.FAMILIES))
def test_sampled_transformations_stay_inside_the_bounds(family):
  images = _images()
  box = family_box(family, GeometricRanges(rotation=10.0, translation=1.5))
  points = 2 if family == "combined" else 5  # 2**7 grid points combined
  _assert_inside(images, box, parameter_grid(box, points))
  _assert_inside(images, box, _random_params(box, jax.random.key(1), 12))


@pytest.mark.parametrize("family", ["rotation", "translation", "scaling"])
def test_every_sub_box_of_a_split_is_sound_and_tighter(family):
  images = _images(seed=2)
  box = family_box(family)
  whole = transformed_image_bounds(images, box)
  regions = split_box(box, 3)
  width_whole = float(jnp.mean(whole.upper - whole.lower))
  widths = []
  for s in range(regions.num_boxes):
    sub = jax.tree.map(lambda leaf: float(leaf[s]), regions)
    _assert_inside(images, sub, parameter_grid(sub, 4))
    bounds = transformed_image_bounds(images, sub)
    widths.append(float(jnp.mean(bounds.upper - bounds.lower)))
  assert max(widths) <= width_whole + TOL
  assert np.mean(widths) < width_whole  # splitting buys tightness


@pytest.mark.parametrize(
  "family, magnitude",
  [
    ("rotation", dict(rotation=1.0)),
    ("translation", dict(translation=0.05)),
    ("scaling", dict(scaling=0.01)),
    ("shearing", dict(shearing=0.01)),
  ],
)
def test_small_boxes_are_sound_and_shrink_towards_the_image(family, magnitude):
  # Around the identity a coordinate box straddles integer pixels, where the
  # window's extrema alone cover 3 pixels however small the box: the mean
  # value bound must narrow the interval in proportion to the box.
  images = _images(seed=4)
  widths = []
  for scale in (1.0, 0.1):
    box = family_box(
      family, GeometricRanges(**{k: v * scale for k, v in magnitude.items()})
    )
    _assert_inside(images, box, parameter_grid(box, 7))
    _assert_inside(images, box, _random_params(box, jax.random.key(5), 8))
    bounds = transformed_image_bounds(images, box)
    widths.append(float(jnp.max(bounds.upper - bounds.lower)))
  assert widths[1] < 0.2 * widths[0]
  assert widths[1] < 0.05


def test_identity_box_gives_the_image_itself():
  images = _images(seed=3)
  identity = parameters.parameter_box()
  bounds = transformed_image_bounds(images, identity)
  np.testing.assert_allclose(bounds.lower, images, atol=1e-6)
  np.testing.assert_allclose(bounds.upper, images, atol=1e-6)


@pytest.mark.parametrize(
  "ranges, message",
  [
    (GeometricRanges(rotation=-1.0), "rotation"),
    (GeometricRanges(scaling=1.5), "scaling"),
  ],
)
def test_bad_ranges_are_refused(ranges, message):
  with pytest.raises(ValueError, match=message):
    family_box("combined", ranges)


def test_unknown_family_lists_the_valid_ones():
  with pytest.raises(ValueError, match="valid ones are"):
    family_box("warping")
