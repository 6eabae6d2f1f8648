"""Bound transforms of any JAX function over l_p input sets.

>>> from cure_jax.bounds import ibp, LinfBall
>>> bounds = ibp(model.apply)(variables, LinfBall(x, 0.1, domain=(0., 1.)))
"""

from cure_jax.bounds.batch_statistics import BatchStatisticsError
from cure_jax.bounds.compiler_options import jit
from cure_jax.bounds.graph import UnsupportedPrimitiveError
from cure_jax.bounds.interval import Interval
from cure_jax.bounds.sets import (
  Box,
  L1Ball,
  L2Ball,
  LinfBall,
  LpBall,
  dual_exponent,
  lp_norm,
)
from cure_jax.bounds.spec import margin_spec, pad_margins
from cure_jax.bounds.transforms import alpha_crown, crown, crown_ibp, ibp

__all__ = [
  "BatchStatisticsError",
  "Box",
  "Interval",
  "L1Ball",
  "L2Ball",
  "LinfBall",
  "LpBall",
  "UnsupportedPrimitiveError",
  "alpha_crown",
  "crown",
  "crown_ibp",
  "dual_exponent",
  "ibp",
  "jit",
  "lp_norm",
  "margin_spec",
  "pad_margins",
]
