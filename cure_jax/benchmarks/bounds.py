r"""Cost of each bound transform relative to a plain forward pass.

  python -m cure_jax.benchmarks.bounds [--model=cnn7] [--batch=128]

Measures, on one random MNIST-shaped batch: the forward pass (eval mode),
and each in alternation with it (`measure.paired_ratio`) IBP of the logits,
IBP with the margin specification, CROWN-IBP with the margin specification
(lower bounds: what margins need) with its rows in cache-sized groups (the
default, `backward.row_groups`) and in one pass, and the vector-Jacobian
product of the network with the 9 margin rows in one pass (the floor of a
one-pass back-substitution from them); then α-CROWN (20 steps, IBP
intermediate bounds, lower bounds, on a smaller batch) per example.

The bound computations are compiled with `cure_jax.bounds.jit`, as the
library's users are told to (and as its certification does); the forward
pass, the yardstick, with `jax.jit`, as a user compiles a model.
"""

import argparse
import json

import jax
import jax.numpy as jnp

from cure_jax.benchmarks.measure import median_seconds, paired_ratio
from cure_jax.bounds import (
  LinfBall,
  alpha_crown,
  crown_ibp,
  ibp,
  jit,
  margin_spec,
)
from cure_jax.models import get_model, ibp_init


def run(
  model_name: str = "cnn7",
  batch: int = 128,
  alpha_batch: int = 8,
  alpha_steps: int = 20,
  eps: float = 0.1,
  repeats: int = 10,
):
  """Returns a dict of seconds and ratios to the forward pass."""
  model = get_model(model_name, num_classes=10)
  key_x, key_y, key_init, key_ibp = jax.random.split(jax.random.key(0), 4)
  x = jax.random.uniform(key_x, (batch, 28, 28, 1))
  y = jax.random.randint(key_y, (batch,), 0, 10)
  variables = model.init(key_init, x[:2], train=False)
  variables = dict(variables, params=ibp_init(variables["params"], key_ibp))
  spec = margin_spec(y, 10)
  ball = lambda x: LinfBall(x, eps, domain=(0.0, 1.0))

  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  ibp_logits = jit(lambda v, x: ibp(model.apply)(v, ball(x), train=False))
  ibp_spec = jit(
    lambda v, x, c: ibp(model.apply)(v, ball(x), train=False, spec=c)
  )
  # Margins need lower bounds only (training and certification).
  crown_ibp_spec = jit(
    lambda v, x, c: crown_ibp(model.apply, bound="lower")(
      v, ball(x), train=False, spec=c
    )
  )
  crown_ibp_one_pass = jit(
    lambda v, x, c: crown_ibp(model.apply, bound="lower", rows_per_pass=None)(
      v, ball(x), train=False, spec=c
    )
  )

  # The floor of any back-substitution from S specification rows: one
  # S-row vector-Jacobian product of the network, with no relaxation at all.
  def spec_vjp(v, x, c):
    _, pull = jax.vjp(lambda x: model.apply(v, x, train=False), x)
    return jax.vmap(pull)(jnp.swapaxes(c, 0, 1))[0]

  spec_vjp = jit(spec_vjp)
  alpha = jit(
    lambda v, x, c: alpha_crown(
      model.apply, steps=alpha_steps, intermediate="ibp", bound="lower"
    )(v, ball(x), train=False, spec=c)
  )

  timed = {
    "ibp": (ibp_logits, (variables, x)),
    "ibp_spec": (ibp_spec, (variables, x, spec)),
    "crown_ibp_spec": (crown_ibp_spec, (variables, x, spec)),
    "crown_ibp_spec_one_pass": (crown_ibp_one_pass, (variables, x, spec)),
    "spec_vjp": (spec_vjp, (variables, x, spec)),
  }
  results = {
    "model": model_name,
    "batch": batch,
    "backend": jax.default_backend(),
    "forward_s": median_seconds(forward, variables, x, repeats=repeats),
  }
  for name, (fn, args) in timed.items():
    seconds, _, ratio = paired_ratio(
      fn, args, forward, (variables, x), repeats=repeats
    )
    results[f"{name}_s"], results[f"{name}_over_forward"] = seconds, ratio
  t_alpha = median_seconds(
    alpha,
    variables,
    x[:alpha_batch],
    spec[:alpha_batch],
    repeats=max(2, repeats // 5),
    warmup=1,
  )
  results["alpha_crown_s_per_example"] = t_alpha / alpha_batch
  results["alpha_crown_steps"] = alpha_steps
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--model", default="cnn7")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  print(json.dumps(run(args.model, args.batch, repeats=args.repeats), indent=2))


if __name__ == "__main__":
  main()
