r"""A Flax model of your own, bounded and certified by cure_jax.

  python -m examples.certify_custom_model [--size tiny] [--out /tmp/run]

1. Define any Flax module; its ``__call__`` needs no ``train`` argument
   (cure_jax passes ``train`` only to models that take it, see
   `cure_jax.models.call_adapter`). Use ReLU, dense, convolutional and
   pooling layers the bound transforms support; for batch normalization use
   `cure_jax.models.BatchNorm`, or flax's in evaluation mode only.
2. Train it as usual (here: a few optax steps of cross-entropy).
3. Bound its logits over an l∞ ball with `cure_jax.bounds.ibp` / `crown`.
4. Certify a test set with `cure_jax.certify.evaluate` (IBP → CROWN → α-CROWN,
   PGD for the upper bound, every point's certified radius) and write the
   reports `certify.csv` / `certify.json` that `python -m cure_jax.plot` reads.
"""

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cure_jax import bounds, certify
from examples.synthetic_images import make_images

NUM_CLASSES = 3
# Examples and steps per size: `tiny` runs in seconds (tests), `default`
# gives a model worth certifying.
SIZES = {
  "tiny": dict(
    train=64,
    test=12,
    steps=5,
    methods=("ibp", "crown"),
    pgd=3,
    tolerance=1 / 8,
    gather=False,  # one compiled shape per stage
    norms=("linf",),
  ),
  "default": dict(
    train=2048,
    test=200,
    steps=300,
    methods=("ibp", "crown", "alpha_crown"),
    pgd=50,
    tolerance=1 / 64,
    gather=True,
    norms=("linf", "l2"),
  ),
}
RADII = {"linf": 0.1, "l2": 0.5}


class CustomCNN(nn.Module):
  """conv → ReLU → dense → ReLU → logits; no ``train`` argument."""

  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))
    x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)


def train_standard(model, images, labels, steps: int, key) -> dict[str, Any]:
  """Variables after ``steps`` Adam steps of cross-entropy (full batch)."""
  variables = model.init(key, images[:1])
  optimizer = optax.adam(1e-2)

  def loss_fn(params):
    logits = model.apply({"params": params}, images)
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, labels
    ).mean()

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = variables["params"], optimizer.init(variables["params"])
  for _ in range(steps):
    params, opt_state = step(params, opt_state)
  return {"params": params}


def logit_bounds(model, variables, images, eps: float) -> dict[str, float]:
  """Mean width of IBP's and CROWN's logit bounds over B∞(x, ε) ∩ [0, 1].

  Raises:
    RuntimeError: a clean logit lies outside its bounds (never, for sound
      bounds).
  """

  @jax.jit
  def widths_and_inside(variables, images):
    ball = bounds.LinfBall(images, eps, domain=(0.0, 1.0))
    logits = model.apply(variables, images)
    result = {}
    for name, transform in (("ibp", bounds.ibp), ("crown", bounds.crown)):
      interval = transform(model.apply)(variables, ball)
      inside = jnp.all(
        (interval.lower <= logits + 1e-5) & (logits <= interval.upper + 1e-5)
      )
      result[name] = (jnp.mean(interval.upper - interval.lower), inside)
    return result

  widths = {}
  for name, (width, inside) in widths_and_inside(variables, images).items():
    if not bool(inside):
      raise RuntimeError(f"{name} bounds miss a clean logit.")
    widths[name] = float(width)
  return widths


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m examples.certify_custom_model"
  )
  parser.add_argument("--size", choices=sorted(SIZES), default="default")
  parser.add_argument("--out", default=None, help="write certify.csv/json here")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains, bounds and certifies the custom model; returns the summary."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  size = SIZES[args.size]
  key_train, key_test, key_init = jax.random.split(
    jax.random.PRNGKey(args.seed), 3
  )
  train_x, train_y = make_images(key_train, size["train"])
  test_x, test_y = make_images(key_test, size["test"])
  model = CustomCNN()
  variables = train_standard(model, train_x, train_y, size["steps"], key_init)
  widths = logit_bounds(model, variables, test_x, RADII["linf"])
  print(f"mean logit bound width at l∞ ε={RADII['linf']}: {widths}")
  records, summary = certify.evaluate(
    model,  # a Flax module, or model.apply, or any (variables, x) -> logits
    variables,
    test_x,
    test_y,
    radii={n: RADII[n] for n in size["norms"]},
    num_classes=NUM_CLASSES,
    methods=size["methods"],
    pgd=certify.PGDSettings(steps=size["pgd"], restarts=1),
    gather=size["gather"],
    radius_search=certify.RadiusSearch(relative_tolerance=size["tolerance"]),
    keep_margins=True,
  )
  summary = dict(summary, method="custom_cnn_standard", bound_widths=widths)
  if args.out:
    certify.write_report(args.out, records, summary)
    print(f"wrote {args.out}/certify.csv and certify.json")
  return summary


if __name__ == "__main__":
  main()
