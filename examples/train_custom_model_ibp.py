r"""Certified training of a model of your own with the library's pieces.

  python -m examples.train_custom_model_ibp [--size tiny]

The loss is IBP certified training (Gowal et al., 2018; docs/method.md §2)
written out from its parts:

  loss = κ · CE(f(x), y) + (1 − κ) · CE_robust(IBP bounds over B∞(x, ε) ∩ [0, 1])

with ε ramped linearly from 0 to its target over the first half of training
and κ from 1 to 1/2 (`cure_jax.objectives.robust_losses.ibp_linf` computes
the robust term from a `cure_jax.objectives.base.Network`). The model has no
``train`` argument; `cure_jax.models.adapt_apply` lets the library call it.
At the end, the cascade certifies the test set at ε; compare with the same
model trained on cross-entropy only (`certify_custom_model`).
"""

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cure_jax.certify import certify_batch
from cure_jax.models import adapt_apply
from cure_jax.objectives.base import Network, cross_entropy
from cure_jax.objectives.robust_losses import ibp_linf
from examples.certify_custom_model import NUM_CLASSES, CustomCNN, train_standard
from examples.synthetic_images import make_images

EPS = 0.1
SIZES = {
  "tiny": dict(train=64, test=12, steps=6, batch=32),
  "default": dict(train=2048, test=200, steps=600, batch=128),
}


def ramp(step, steps: int, start: float, end: float):
  """Linear from ``start`` at step 0 to ``end`` at half of ``steps``."""
  fraction = jnp.minimum(step / max(steps // 2, 1), 1.0)
  return start + fraction * (end - start)


def make_train_step(model, optimizer, steps: int, eps: float):
  """One jitted step of the IBP loss above: (params, opt_state, x, y, step)."""
  apply_fn = adapt_apply(model)

  def loss_fn(params, images, labels, step):
    network = Network(apply_fn, {"params": params}, NUM_CLASSES)
    kappa = ramp(step, steps, 1.0, 0.5)
    robust = ibp_linf(network, images, labels, ramp(step, steps, 0.0, eps))
    clean = cross_entropy(network.logits(images), labels)
    loss = kappa * clean.mean() + (1 - kappa) * robust.loss.mean()
    return loss, robust.certified.mean()

  @jax.jit
  def train_step(params, opt_state, images, labels, step):
    (loss, certified), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, images, labels, step
    )
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, certified

  return train_step


def train_ibp(model, images, labels, steps: int, batch: int, key, eps=EPS):
  """Variables after ``steps`` Adam steps of the IBP loss; the losses."""
  key_init, key_order = jax.random.split(key)
  params = model.init(key_init, images[:1])["params"]
  optimizer = optax.adam(5e-3)
  opt_state = optimizer.init(params)
  train_step = make_train_step(model, optimizer, steps, eps)
  losses = []
  for step in range(steps):
    rows = jax.random.choice(
      jax.random.fold_in(key_order, step), len(labels), (batch,), replace=False
    )
    params, opt_state, loss, _ = train_step(
      params, opt_state, images[rows], labels[rows], step
    )
    losses.append(float(loss))
  return {"params": params}, losses


def certified_accuracy(model, variables, images, labels, eps=EPS) -> float:
  """Fraction certified at l∞ ε by IBP then CROWN."""
  result = certify_batch(
    model,
    variables,
    images,
    labels,
    norm="linf",
    eps=eps,
    num_classes=NUM_CLASSES,
    methods=("ibp", "crown"),
    gather=False,
  )
  return float(jnp.mean(result.certified))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m examples.train_custom_model_ibp"
  )
  parser.add_argument("--size", choices=sorted(SIZES), default="default")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains with cross-entropy and with IBP; returns both certified accuracies."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  size = SIZES[args.size]
  key_train, key_test, key_model = jax.random.split(
    jax.random.PRNGKey(args.seed), 3
  )
  train_x, train_y = make_images(key_train, size["train"])
  test_x, test_y = make_images(key_test, size["test"])
  model = CustomCNN()
  standard = train_standard(model, train_x, train_y, size["steps"], key_model)
  certified, losses = train_ibp(
    model, train_x, train_y, size["steps"], size["batch"], key_model
  )
  result = {
    "losses": losses,
    "certified_standard": certified_accuracy(model, standard, test_x, test_y),
    "certified_ibp": certified_accuracy(model, certified, test_x, test_y),
  }
  print(
    f"l∞ ε={EPS}: certified accuracy {result['certified_standard']:.1%} "
    f"(cross-entropy) vs {result['certified_ibp']:.1%} (IBP); loss "
    f"{losses[0]:.3f} -> {losses[-1]:.3f}"
  )
  return result


if __name__ == "__main__":
  main()
