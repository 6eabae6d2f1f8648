r"""A convolution's transpose: JAX's statement, kernel rows, kernel taps.

  python -m cure_jax.benchmarks.conv_transpose [--repeats=7] [--only=NAME,...]

CROWN pulls each pass's rows back through every convolution by its
transpose Lᵀ (`cure_jax.bounds.conv_transpose`). For the convolutions of
the small MNIST CNN and of CNN7, at the row counts of their passes, this
times Lᵀc under `cure_jax.bounds.jit` three ways — JAX's statement (a
convolution over the input padded by the kernel's extent), the kernel-rows
statement and the kernel-taps statement (a matrix product and a sum of
placed taps) — each alternately with JAX's, so that a shared machine slows
both members of a pair alike (`measure.paired_ratio`), checks that they
agree, and says which one `conv_transpose.pullback` uses there. The process
keeps its freed memory, as the certify command does
(`cure_jax.host_memory`).
"""

import argparse
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax import bounds, host_memory
from cure_jax.benchmarks import measure
from cure_jax.bounds import conv_transpose

CONV = jax.lax.conv_general_dilated_p


class Geometry(NamedTuple):
  """A square NHWC convolution by a square HWIO kernel, and its pass's
  rows (c's leading axis)."""

  name: str
  rows: int
  size: int
  features_in: int
  features_out: int
  kernel: int
  stride: int
  padding: int


GEOMETRIES = (
  # small CNN, CROWN at batch 8: the dense layer's pass (100 neurons, a
  # lower and an upper row each) and the output pass (9 margins).
  Geometry("small_cnn_conv2_dense_pass", 1600, 13, 16, 32, 4, 1, 0),
  Geometry("small_cnn_conv2_output_pass", 72, 13, 16, 32, 4, 1, 0),
  Geometry("small_cnn_conv1_dense_pass", 1600, 28, 1, 16, 4, 2, 0),
  Geometry("small_cnn_conv1_output_pass", 72, 28, 1, 16, 4, 2, 0),
  # CNN7 (MNIST), CROWN-IBP at batch 128: the 9 margins' rows.
  Geometry("cnn7_conv1", 576, 28, 1, 64, 3, 1, 1),
  Geometry("cnn7_conv2", 576, 28, 64, 64, 3, 1, 1),
  Geometry("cnn7_conv3_strided", 1152, 28, 64, 128, 3, 2, 1),
  Geometry("cnn7_conv4", 1152, 14, 128, 128, 3, 1, 1),
)


def _operands(geometry: Geometry):
  """(params, kernel, x shape, c) of a geometry, random data."""
  g = geometry
  kernel = jax.random.normal(
    jax.random.key(1), (g.kernel, g.kernel, g.features_in, g.features_out)
  )
  x_shape = (1, g.size, g.size, g.features_in)
  params = dict(
    window_strides=(g.stride, g.stride),
    padding=((g.padding, g.padding), (g.padding, g.padding)),
    lhs_dilation=(1, 1),
    rhs_dilation=(1, 1),
    dimension_numbers=jax.lax.conv_dimension_numbers(
      x_shape, kernel.shape, ("NHWC", "HWIO", "NHWC")
    ),
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
    out_sharding=None,
  )
  y = jax.eval_shape(
    lambda x: CONV.bind(x, kernel, **params),
    jax.ShapeDtypeStruct(x_shape, jnp.float32),
  )
  c = jax.random.normal(jax.random.key(0), (g.rows,) + y.shape[1:])
  return params, kernel, x_shape, c


def time_geometry(geometry: Geometry, repeats: int = 7) -> dict:
  """Median milliseconds of the three statements of Lᵀc, the median
  speed-ups of kernel rows and kernel taps over JAX's statement, their
  largest difference from it relative to its largest entry, and the
  statement `pullback` uses ("jax", "rows" or "taps")."""
  params, kernel, x_shape, c = _operands(geometry)
  shape = (c.shape[0],) + x_shape[1:]

  def jax_statement(c, k):
    return conv_transpose._transposed(CONV, params, c, k, shape, c.dtype)

  def by_rows(c, k):
    return conv_transpose._transposed_by_rows(
      CONV, params, c, k, shape, c.dtype
    )

  def by_taps(c, k):
    return conv_transpose._transposed_by_taps(params, c, k, shape)

  base = bounds.jit(jax_statement)
  expected = base(c, kernel)
  scale = float(jnp.max(jnp.abs(expected)))
  result = dict(name=geometry.name, rows=geometry.rows, relative_difference=0.0)
  for name, statement in (("rows", by_rows), ("taps", by_taps)):
    statement = bounds.jit(statement)
    got = statement(c, kernel)
    result["relative_difference"] = max(
      result["relative_difference"],
      float(jnp.max(jnp.abs(got - expected))) / scale,
    )
    own_s, jax_s, ratio = measure.paired_ratio(
      statement, (c, kernel), base, (c, kernel), repeats=repeats
    )
    result[f"{name}_ms"] = 1e3 * own_s
    result[f"jax_ms_beside_{name}"] = 1e3 * jax_s
    result[f"{name}_speedup"] = 1.0 / ratio
  result["jax_ms"] = min(
    result["jax_ms_beside_rows"], result["jax_ms_beside_taps"]
  )
  result["pullback_uses"] = conv_transpose.statement(
    params, kernel.shape, shape, c.shape
  )
  return result


_USES = {"jax": "JAX's statement", "rows": "kernel rows", "taps": "kernel taps"}


def table(results: list[dict]) -> str:
  """A Markdown table: JAX's time is the faster of its two pairings."""
  lines = [
    "| pass | rows | JAX's statement ms | kernel rows ms (speed-up) "
    "| kernel taps ms (speed-up) | pullback uses |",
    "|---|---|---|---|---|---|",
  ]
  for r in results:
    lines.append(
      f"| {r['name']} | {r['rows']} | {r['jax_ms']:.2f} | "
      f"{r['rows_ms']:.2f} ({r['rows_speedup']:.2f}×) | "
      f"{r['taps_ms']:.2f} ({r['taps_speedup']:.2f}×) | "
      f"{_USES[r['pullback_uses']]} |"
    )
  return "\n".join(lines)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument(
    "--only", default="", help="comma-separated geometry names"
  )
  args = parser.parse_args(argv)
  names = {g.name for g in GEOMETRIES}
  only = [n for n in args.only.split(",") if n]
  unknown = sorted(set(only) - names)
  if unknown:
    parser.error(f"unknown geometry {unknown}; known: {sorted(names)}")
  chosen = [g for g in GEOMETRIES if not only or g.name in only]
  results = []
  for geometry in chosen:
    results.append(time_geometry(geometry, args.repeats))
    worst = results[-1]["relative_difference"]
    if not np.isfinite(worst) or worst > 1e-5:
      raise SystemExit(f"{geometry.name}: the statements differ ({worst})")
  print(table(results))
  return results


if __name__ == "__main__":
  host_memory.keep_freed_memory()  # before JAX's CPU client exists
  main()
