r"""Certification cost per test point under patches and geometric families.

  python -m cure_jax.benchmarks.beyond_lp [--model=small_cnn|cnn7] [--rows=128]

For each threat model of the default ``config.eval.beyond_lp`` (2×2 and 5×5
patches; rotation, translation, scaling, shearing, brightness/contrast and
all combined) on MNIST-shaped input, times one chunk of ``rows`` (point,
region) rows bounded by IBP and by CROWN-IBP (margin lower bounds), and
reports seconds per row and per test point when every region is bounded:
the cost of a point that certifies (an uncertifiable point stops at its
first failing region). The model is IBP-initialized at random, as in
`benchmarks.bounds`; trained runs record theirs in ``beyond_lp.json``.
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax import config_schema
from cure_jax.benchmarks.measure import median_seconds
from cure_jax.certify.beyond_lp import threats_from_config
from cure_jax.certify.regions import _region_min_margin_jit
from cure_jax.models import get_model, ibp_init
from cure_jax.parallel.precision import certification_precision


def run(model_name: str = "small_cnn", rows: int = 128, repeats: int = 3):
  """Returns {threat: {regions, ibp_s_per_row, ..._s_per_point}}."""
  model = get_model(model_name, num_classes=10)
  key_x, key_init, key_ibp = jax.random.split(jax.random.key(0), 3)
  images = jax.random.uniform(key_x, (2, 28, 28, 1))
  labels = jnp.array([3, 7])
  variables = model.init(key_init, images, train=False)
  variables = dict(variables, params=ibp_init(variables["params"], key_ibp))
  threats = threats_from_config(
    config_schema.base_config().eval.beyond_lp, (28, 28)
  )
  results = {
    "model": model_name,
    "rows": rows,
    "backend": jax.default_backend(),
  }
  for threat in threats:
    region = threat.region
    index = np.arange(rows) % region.num_regions
    params = jax.tree.map(lambda leaf: jnp.asarray(leaf[index]), region.regions)
    point = jnp.zeros(rows, jnp.int32)
    entry = {"regions": region.num_regions}
    for method in ("ibp", "crown_ibp"):
      fn = lambda v, x, y, p, r, m=method: _region_min_margin_jit(
        model.apply, region.boxes, m, 10, v, x, y, p, r
      )
      with certification_precision():
        seconds = median_seconds(
          fn,
          variables,
          images,
          labels,
          point,
          params,
          repeats=repeats,
          warmup=1,
        )
      entry[f"{method}_s_per_row"] = seconds / rows
      entry[f"{method}_s_per_point"] = seconds / rows * region.num_regions
    results[region.name] = entry
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--model", default="small_cnn")
  parser.add_argument("--rows", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(json.dumps(run(args.model, args.rows, args.repeats), indent=2))


if __name__ == "__main__":
  main()
