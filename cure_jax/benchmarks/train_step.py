r"""Train-step time of each objective relative to natural training.

  python -m cure_jax.benchmarks.train_step [--models=small_cnn,cnn7] \
      [--methods=natural,ibp,ibp/bn_moment_gradients=False,sabr,...] \
      [--batch=128]

Times the jitted `train_step` of `cure_jax.train.step` (objective, gradient,
Adam update; gradient projection's natural branch included for
cure_scratch) on one random MNIST-shaped batch, after the ε ramp (κ = 0,
full radii), each method in alternation with the natural step so that the
ratios survive a shared or throttled machine (`measure.paired_ratio`). A
method may carry config overrides after slashes, ``METHOD/key=value/...``
(values are Python literals).
"""

import argparse
import ast
import json

import jax
import jax.numpy as jnp

from cure_jax.benchmarks.measure import median_seconds, paired_ratio
from cure_jax.config_schema import load_config
from cure_jax.models import build_model
from cure_jax.objectives.base import Batch
from cure_jax.train.state import create_train_state, make_optimizer
from cure_jax.train.step import make_schedules, make_train_step, phase_at


def _method_and_overrides(spec: str):
  """ "ibp/bn_moment_gradients=False" -> ("ibp", {"bn_moment_gradients": False})."""
  method, *pairs = spec.split("/")
  overrides = {}
  for pair in pairs:
    key, _, value = pair.partition("=")
    overrides[key] = ast.literal_eval(value)
  return method, overrides


def split_methods(text: str) -> list[str]:
  """Splits ``--methods`` on the commas outside brackets, so that a value
  such as ``train_norms=('linf','l2','l1')`` stays in one method."""
  methods, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth += char in "([{"
    depth -= char in ")]}"
    if char == "," and depth == 0:
      methods.append(text[start:i])
      start = i + 1
  return methods + [text[start:]]


def compiled_step(
  model_name: str, spec: str, batch: int, config_path: str = "configs/mnist.py"
):
  """(jitted step returning the loss, its arguments) for one method."""
  method, overrides = _method_and_overrides(spec)
  config = load_config(f"{config_path}:method={method}")
  config.model.name = model_name
  config.batch_size = batch
  config.update_from_flattened_dict(overrides)  # unknown keys raise
  steps_per_epoch = 100
  model = build_model(config)
  optimizer = make_optimizer(config, steps_per_epoch)
  state = create_train_state(config, model, optimizer, (28, 28, 1))
  sched = make_schedules(config, steps_per_epoch)
  # Past the ramp: full radii, robust loss on, gradient projection active.
  state = state._replace(step=jnp.asarray(sched.ramp_end + 1, jnp.int32))
  phase = phase_at(config, sched, sched.ramp_end + 1)
  step = jax.jit(make_train_step(config, model, optimizer, sched, phase))
  key_x, key_y = jax.random.split(jax.random.key(1))
  data = Batch(
    jax.random.uniform(key_x, (batch, 28, 28, 1)),
    jax.random.randint(key_y, (batch,), 0, 10),
  )
  return (lambda s, b: step(s, b)[1]["loss"]), (state, data)


def run(models, methods, batch=128, repeats=5):
  """Each method timed in alternation with natural (`paired_ratio`)."""
  results = []
  for model_name in models:
    natural, natural_args = compiled_step(model_name, "natural", batch)
    for method in methods:
      if method == "natural":
        seconds = base = median_seconds(natural, *natural_args, repeats=repeats)
        ratio = 1.0
      else:
        fn, args = compiled_step(model_name, method, batch)
        seconds, base, ratio = paired_ratio(
          fn, args, natural, natural_args, repeats=repeats
        )
      results.append(
        dict(
          model=model_name,
          method=method,
          batch=batch,
          step_s=seconds,
          natural_s=base,
          over_natural=ratio,
        )
      )
      print(json.dumps(results[-1]), flush=True)
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--models", default="small_cnn,cnn7")
  parser.add_argument(
    "--methods", default="natural,ibp,sabr,cure_max,cure_scratch"
  )
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  run(
    args.models.split(","),
    split_methods(args.methods),
    args.batch,
    args.repeats,
  )


if __name__ == "__main__":
  main()
