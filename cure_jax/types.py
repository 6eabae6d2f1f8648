"""Types and constants shared by every package.

Images live in the pixel domain [0, 1]; input normalization, where a dataset
has one, is the model's first layer, so radii are measured in pixel space
(docs/method.md §5).
"""

from typing import Any, NamedTuple

PyTree = Any
Params = Any

# Lower and upper end of every pixel, as a (lo, hi) pair; `None` where a set
# is not intersected with the domain.
Domain = tuple[float, float] | None
PIXEL_DOMAIN: tuple[float, float] = (0.0, 1.0)

# The l_p threat models, in the order tables and reports list them.
NORMS: tuple[str, ...] = ("linf", "l2", "l1")


class Batch(NamedTuple):
  """Examples and labels: numpy on the host, jax.Array on devices.

  Attributes:
    images: float32 [B, H, W, C] in [0, 1].
    labels: int32 [B].
  """

  images: Any
  labels: Any
