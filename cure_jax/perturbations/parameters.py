"""Transformation parameters, their ranges, and splitting ranges into boxes.

A transformation is described by seven parameters (`TransformParams`); the
geometric ones act on pixel coordinates, the photometric ones on values
(see `warps` for the exact maps):

  rotation       angle φ in degrees (clockwise on screen: y points down)
  translation_x  shift t_x in pixels (to the right)
  translation_y  shift t_y in pixels (downwards)
  scaling        zoom factor s > 0 (s > 1 enlarges the content)
  shearing       horizontal shear factor m (x' = x + m·y)
  contrast       factor c >= 0 on pixel values
  brightness     offset b on pixel values

A threat model is a `ParameterBox` (one closed interval per parameter;
parameters outside the family stay at the identity). Certification splits it
into sub-boxes (`split_box`) and certifies each; the empirical attack samples a
grid (`parameter_grid`). `family_box` builds the boxes of the named families
(`FAMILIES`) from ± magnitudes (`GeometricRanges`).
"""

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np

Range = tuple[float, float]


class TransformParams(NamedTuple):
  """One value per parameter (scalars, or arrays of a common shape).

  The defaults are the identity transformation.
  """

  rotation: jax.Array | float = 0.0
  translation_x: jax.Array | float = 0.0
  translation_y: jax.Array | float = 0.0
  scaling: jax.Array | float = 1.0
  shearing: jax.Array | float = 0.0
  contrast: jax.Array | float = 1.0
  brightness: jax.Array | float = 0.0


PARAMETERS = TransformParams._fields
IDENTITY = TransformParams()
GEOMETRIC_PARAMETERS = (
  "rotation",
  "translation_x",
  "translation_y",
  "scaling",
  "shearing",
)
PHOTOMETRIC_PARAMETERS = ("contrast", "brightness")


class ParameterBox(NamedTuple):
  """The box lower <= θ <= upper of transformation parameters (a pytree).

  Leaves are scalars for one box, or arrays [S] for S boxes (sub-boxes of a
  split, stacked).
  """

  lower: TransformParams
  upper: TransformParams

  @property
  def num_boxes(self) -> int:
    """S, the number of stacked boxes (1 for scalar leaves)."""
    shape = np.shape(self.lower.rotation)
    return int(shape[0]) if shape else 1


class GeometricRanges(NamedTuple):
  """± magnitudes of each family's parameters (defaults: MNIST).

  φ ∈ ±rotation degrees, t_x, t_y ∈ ±translation pixels, m ∈ ±shearing,
  b ∈ ±brightness; s ∈ 1 ± scaling, c ∈ 1 ± contrast.
  """

  rotation: float = 15.0
  translation: float = 2.0
  scaling: float = 0.1
  shearing: float = 0.1
  brightness: float = 0.1
  contrast: float = 0.1


FAMILIES = {
  "rotation": ("rotation",),
  "translation": ("translation_x", "translation_y"),
  "scaling": ("scaling",),
  "shearing": ("shearing",),
  "brightness_contrast": ("contrast", "brightness"),
  "combined": PARAMETERS,
}


def _check_range(name: str, value) -> Range:
  """A validated (lo, hi) pair of floats for parameter ``name``."""
  if name not in PARAMETERS:
    raise ValueError(
      f"Unknown transformation parameter {name!r}; valid ones are {PARAMETERS}."
    )
  try:
    lo, hi = (float(v) for v in value)
  except (TypeError, ValueError) as error:
    raise ValueError(
      f"the range of {name} must be a pair (lower, upper) of "
      f"numbers, got {value!r}."
    ) from error
  if not (math.isfinite(lo) and math.isfinite(hi)):
    raise ValueError(f"the range of {name} must be finite, got [{lo}, {hi}].")
  if lo > hi:
    raise ValueError(
      f"the range of {name} has lower bound {lo} > upper "
      f"bound {hi}; write it as (lower, upper)."
    )
  if name == "scaling" and lo <= 0:
    raise ValueError(
      f"scaling factors must be > 0 (1 is the identity), got "
      f"the range [{lo}, {hi}]."
    )
  if name == "contrast" and lo < 0:
    raise ValueError(
      f"contrast factors must be >= 0 (1 is the identity), got "
      f"the range [{lo}, {hi}]."
    )
  return lo, hi


def parameter_box(**ranges: Range) -> ParameterBox:
  """The box of the given parameter ranges, the identity elsewhere.

  Example: ``parameter_box(rotation=(-15, 15), scaling=(0.9, 1.1))``; the
  leaves are Python floats.

  Raises:
    ValueError: for an unknown name, lower > upper, a non-finite bound, a
      scaling range reaching 0 or below, or a negative contrast.
  """
  checked = {name: _check_range(name, value) for name, value in ranges.items()}
  lower = IDENTITY._replace(**{n: lo for n, (lo, _) in checked.items()})
  upper = IDENTITY._replace(**{n: hi for n, (_, hi) in checked.items()})
  return ParameterBox(lower, upper)


def check_ranges(ranges: GeometricRanges) -> GeometricRanges:
  """Validates ± magnitudes: all >= 0, scaling < 1 and contrast <= 1."""
  for name, value in ranges._asdict().items():
    if not (
      isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
    ):
      raise ValueError(
        f"the magnitude of {name} must be a finite number >= "
        f"0 (a range ±{name}), got {value!r}."
      )
  if ranges.scaling >= 1:
    raise ValueError(
      f"scaling={ranges.scaling} would allow a zoom factor "
      f"1 - {ranges.scaling} <= 0; use a magnitude below 1."
    )
  if ranges.contrast > 1:
    raise ValueError(
      f"contrast={ranges.contrast} would allow a negative "
      "contrast factor; use a magnitude of at most 1."
    )
  return ranges


def _family_ranges(ranges: GeometricRanges) -> Mapping[str, Range]:
  """Every parameter's range under the magnitudes ``ranges``."""
  return {
    "rotation": (-ranges.rotation, ranges.rotation),
    "translation_x": (-ranges.translation, ranges.translation),
    "translation_y": (-ranges.translation, ranges.translation),
    "scaling": (1.0 - ranges.scaling, 1.0 + ranges.scaling),
    "shearing": (-ranges.shearing, ranges.shearing),
    "contrast": (1.0 - ranges.contrast, 1.0 + ranges.contrast),
    "brightness": (-ranges.brightness, ranges.brightness),
  }


def family_box(
  family: str, ranges: GeometricRanges = GeometricRanges()
) -> ParameterBox:
  """The parameter box (scalar leaves) of a family of `FAMILIES`
  (``'combined'``: all parameters at once).

  Raises:
    ValueError: for an unknown family or invalid magnitudes.
  """
  if family not in FAMILIES:
    raise ValueError(
      f"Unknown transformation family {family!r}; valid ones "
      f"are {tuple(FAMILIES)}."
    )
  every = _family_ranges(check_ranges(ranges))
  return parameter_box(**{name: every[name] for name in FAMILIES[family]})


def active_parameters(box: ParameterBox) -> tuple[str, ...]:
  """Names of the parameters whose range is not a single point."""
  return tuple(
    name
    for name in PARAMETERS
    if np.any(
      np.asarray(getattr(box.lower, name))
      != np.asarray(getattr(box.upper, name))
    )
  )


def _check_count(name: str, count) -> int:
  if (
    not isinstance(count, (int, np.integer))
    or isinstance(count, bool)
    or (count < 1)
  ):
    raise ValueError(f"{name} must be an integer >= 1, got {count!r}.")
  return int(count)


def _scalar_box(box: ParameterBox) -> ParameterBox:
  if box.num_boxes != 1 or any(np.ndim(leaf) for leaf in jax.tree.leaves(box)):
    raise ValueError(
      "expected a single parameter box (scalar leaves), got "
      f"stacked boxes of size {box.num_boxes}."
    )
  return jax.tree.map(float, box)


def _product(axes: Sequence[np.ndarray]) -> np.ndarray:
  """Rows of the cartesian product of 1-D arrays: [prod(len), len(axes)]."""
  return np.asarray(list(itertools.product(*axes)), np.float64).reshape(
    -1, len(axes)
  )


def split_box(box: ParameterBox, subintervals: int) -> ParameterBox:
  """Splits every non-degenerate range into equal sub-intervals.

  The sub-boxes are the cartesian product of the pieces, so a box with k
  non-degenerate parameters gives ``subintervals**k`` of them; their union
  is the box (adjacent pieces share their endpoints exactly). The leaves
  are float32 arrays [S].

  Raises:
    ValueError: if ``box`` is stacked or ``subintervals`` is not an int >= 1.
  """
  box = _scalar_box(box)
  subintervals = _check_count("subintervals", subintervals)
  active = active_parameters(box)
  edges = {
    n: np.linspace(
      getattr(box.lower, n), getattr(box.upper, n), subintervals + 1
    )
    for n in active
  }
  pieces = _product([np.arange(subintervals)] * len(active))
  pieces = pieces.astype(np.int64)
  num = len(pieces)
  lower, upper = {}, {}
  for name in PARAMETERS:
    if name in edges:
      k = pieces[:, active.index(name)]
      lower[name], upper[name] = edges[name][k], edges[name][k + 1]
    else:
      lower[name] = upper[name] = np.full(num, getattr(box.lower, name))
  as_params = lambda d: TransformParams(
    **{n: np.asarray(v, np.float32) for n, v in d.items()}
  )
  return ParameterBox(as_params(lower), as_params(upper))


def parameter_grid(box: ParameterBox, points: int) -> TransformParams:
  """An evenly spaced grid over a single box: float32 leaves [points**k].

  ``points`` >= 2 includes both endpoints of each of the k non-degenerate
  ranges; 1 takes the centre.
  """
  box = _scalar_box(box)
  points = _check_count("points", points)
  active = active_parameters(box)

  def values(name):
    lo, hi = getattr(box.lower, name), getattr(box.upper, name)
    return np.linspace(lo, hi, points) if points > 1 else [0.5 * (lo + hi)]

  grid = _product([values(n) for n in active])
  return TransformParams(
    **{
      n: np.asarray(
        grid[:, active.index(n)]
        if n in active
        else np.full(len(grid), getattr(box.lower, n)),
        np.float32,
      )
      for n in PARAMETERS
    }
  )
