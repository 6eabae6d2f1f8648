"""Threat models beyond l_p, as regions to certify and attacks to run.

A `Threat` pairs the regions of `certify.regions` (input boxes whose union
holds every perturbed input) with the empirical attack of
`certify.region_attacks` for the same threat model:

* `patch_threat`: a p×p patch with arbitrary values at any of the
  (H − p + 1)(W − p + 1) positions (Chiang et al., 2020);
* `geometric_threat`: a transformation family (`parameters.FAMILIES`) at ±
  magnitudes, its parameter box split into sub-boxes.

`threats_from_config` builds the list ``config.eval.beyond_lp`` asks for.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from cure_jax.certify import region_attacks, regions
from cure_jax.perturbations import geometric_bounds, parameters, patches

ATTACK_ROWS = 128  # (point, region) rows per attack call
FAMILY_DESCRIPTIONS = {
  "rotation": "rotation ±{rotation:g}°",
  "translation": "translation ±{translation:g} px in x and y",
  "scaling": "scaling ×[1 − {scaling:g}, 1 + {scaling:g}]",
  "shearing": "shearing ±{shearing:g}",
  "brightness_contrast": (
    "brightness ±{brightness:g} and contrast ×[1 − "
    "{contrast:g}, 1 + {contrast:g}]"
  ),
  "combined": "every family above at once",
}


class Threat(NamedTuple):
  """A threat model with its certification regions and empirical attack.

  ``attack(apply_fn, variables, images, labels, points, hints, key) -> [B]``
  bool: correctly classified and not broken (points outside ``points`` count
  as classified); ``hints`` is the [B] `RegionResult.failing_region`, ``key``
  the PRNG key of any random starts.
  """

  region: regions.RegionThreat
  description: str
  attack: Callable[..., Any]

  @property
  def name(self) -> str:
    return self.region.name


def patch_threat(size: int, image_shape, *, attack_steps: int = 10) -> Threat:
  """The p×p patch threat model for images of ``image_shape`` (H, W, ...).

  Raises:
    ValueError: the size is not an integer >= 1 or exceeds the image.
  """
  height, width = image_shape[:2]
  positions = patches.patch_positions(height, width, size)
  attack = functools.partial(
    _patch_attack, size=size, positions=positions, steps=attack_steps
  )
  region = regions.RegionThreat(
    f"patch_{size}", patches.PatchBoxes(size), positions
  )
  return Threat(
    region, f"{size}×{size} patch, any of {len(positions)} positions", attack
  )


def _patch_attack(
  apply_fn,
  variables,
  images,
  labels,
  points,
  hints,
  key,
  *,
  size,
  positions,
  steps,
):
  # The failing position first; then small chunks, so that a broken point
  # stops after the chunk that broke it.
  return region_attacks.patch_attack(
    apply_fn,
    variables,
    images,
    labels,
    size=size,
    positions=positions,
    steps=steps,
    key=key,
    points=points,
    rows_per_batch=ATTACK_ROWS,
    first_positions=hints,
  )


def _grid_attack(
  apply_fn, variables, images, labels, points, hints, key, *, grid
):
  del hints, key  # failing sub-boxes do not index the grid; no randomness
  return region_attacks.grid_attack(
    apply_fn,
    variables,
    images,
    labels,
    grid=grid,
    points=points,
    rows_per_batch=ATTACK_ROWS,
  )


def geometric_threat(
  family: str, ranges: Mapping[str, float], subintervals: int, grid_points: int
) -> Threat:
  """A family's threat model: ± ``ranges`` (`parameters.GeometricRanges`
  fields), ``subintervals`` pieces per parameter to certify, ``grid_points``
  values per parameter to attack.

  Raises:
    ValueError: for an unknown family, bad magnitudes or counts.
  """
  magnitudes = parameters.GeometricRanges(**dict(ranges))
  box = parameters.family_box(family, magnitudes)
  sub_boxes = parameters.split_box(box, subintervals)
  grid = parameters.parameter_grid(box, grid_points)
  region = regions.RegionThreat(
    family, geometric_bounds.region_boxes, sub_boxes
  )
  description = FAMILY_DESCRIPTIONS[family].format(**magnitudes._asdict())
  return Threat(
    region,
    f"{description}, {sub_boxes.num_boxes} sub-boxes",
    functools.partial(_grid_attack, grid=grid),
  )


def threats_from_config(settings, image_shape) -> list[Threat]:
  """Every threat model of ``settings`` (``config.eval.beyond_lp``) for
  images of ``image_shape`` (H, W, ...), patches first.

  Raises:
    ValueError: for an unknown family, a patch larger than the image, a bad
      range or count; the message names the key to fix.
  """
  threats = []
  for size in settings.patch_sizes:
    try:
      threats.append(
        patch_threat(
          size, image_shape, attack_steps=settings.patch_attack_steps
        )
      )
    except ValueError as error:
      raise ValueError(f"eval.beyond_lp.patch_sizes: {error}") from error
  for family in settings.families:
    if family not in parameters.FAMILIES:
      raise ValueError(
        f"eval.beyond_lp.families lists {family!r}; valid "
        f"families are {tuple(parameters.FAMILIES)}."
      )
    counts = {
      key: settings[key].get(family) for key in ("subintervals", "grid_points")
    }
    missing = [key for key, count in counts.items() if count is None]
    if missing:
      raise ValueError(
        f"eval.beyond_lp lists the family {family!r} but "
        f"eval.beyond_lp.{missing[0]} has no entry for it."
      )
    try:
      threats.append(
        geometric_threat(
          family,
          settings.ranges.to_dict(),
          counts["subintervals"],
          counts["grid_points"],
        )
      )
    except ValueError as error:
      raise ValueError(f"eval.beyond_lp ({family}): {error}") from error
  return threats
