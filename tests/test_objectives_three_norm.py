"""Three-norm CURE and the certified l1 term, through `make_objective`.

Each objective is compared with the same losses written out by hand from
`robust_losses` and `multi_norm`, on a model without BatchNorm (so the
network the objective bounds is the plain model) at κ = 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.config_schema import load_config
from cure_jax.models import ConvNet
from cure_jax.objectives import multi_norm, robust_losses
from cure_jax.objectives.base import Batch, Network, StepContext
from cure_jax.objectives.objective import make_objective

MODEL = ConvNet(
  num_classes=10,
  conv_widths=(4,),
  conv_strides=(2,),
  dense_widths=(16,),
  batch_norm=False,
)
THREE = ("linf", "l2", "l1")


def _config(method, **overrides):
  config = load_config(f"configs/mnist.py:cpu=True,method={method}")
  base = dict(warmup_reg=False, l1_reg=0.0, pgd_steps=2)
  config.update_from_flattened_dict({**base, **overrides})
  return config


@pytest.fixture(scope="module")
def setup():
  kx, ky, kinit = jax.random.split(jax.random.key(0), 3)
  batch = Batch(
    jax.random.uniform(kx, (6, 12, 12, 1)), jax.random.randint(ky, (6,), 0, 10)
  )
  variables = MODEL.init(kinit, batch.images, train=False)
  ctx = StepContext(
    rng=jax.random.key(5),
    eps_linf=jnp.float32(0.05),
    eps_l2=jnp.float32(0.3),
    kappa=jnp.float32(0.0),
    reg_scale=jnp.float32(0.0),
    eps_l1=jnp.float32(0.8),
  )
  return variables, batch, ctx


def _loss(config, setup):
  variables, batch, ctx = setup
  objective = jax.jit(make_objective(config, MODEL, kappa_is_zero=True))
  return objective(variables["params"], {}, batch, ctx)


def _by_hand(config, setup, batch=None):
  """Each norm's per-example loss, with the objective's keys."""
  variables, full, ctx = setup
  batch = full if batch is None else batch
  losses = jax.jit(_per_norm_losses, static_argnums=(0, 1, 2))
  return losses(
    config.lambda_linf,
    config.lambda_l2,
    config.pgd_steps,
    variables,
    batch,
    ctx,
  )


def _per_norm_losses(lambda_linf, lambda_l2, pgd_steps, variables, batch, ctx):
  network = Network(MODEL.apply, variables, 10)
  k_inf, k_2, _ = jax.random.split(ctx.rng, 3)
  x, y = batch.images, batch.labels
  return {
    "linf": robust_losses.sabr_linf(
      network,
      x,
      y,
      ctx.eps_linf,
      lam=lambda_linf,
      key=k_inf,
      pgd_steps=pgd_steps,
    ).loss,
    "l2": robust_losses.l2_certified(
      network,
      x,
      y,
      ctx.eps_l2,
      lam=lambda_l2,
      key=k_2,
      pgd_steps=pgd_steps,
    ).loss,
    "l1": robust_losses.l1_crown_ibp(network, x, y, ctx.eps_l1).loss,
  }


def test_three_norm_max_is_the_mean_of_the_largest_of_three_losses(setup):
  config = _config(
    "cure_max", train_norms=THREE, l2_variant="certified", lambda_l2=0.4
  )
  loss, (_, metrics) = _loss(config, setup)
  losses = _by_hand(config, setup)
  expected = jnp.mean(
    jnp.maximum(losses["linf"], jnp.maximum(*[losses[n] for n in ("l2", "l1")]))
  )
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert {"linf_certified", "l2_certified", "l1_certified"} <= set(metrics)
  # The l1 term is not the l∞ one: dropping it changes the loss.
  two = _loss(_config("cure_max", l2_variant="certified", lambda_l2=0.4), setup)
  assert not np.isclose(float(two[0]), float(loss))


def test_three_norm_joint_weighs_each_norm(setup):
  weights = (0.5, 0.25, 0.25)
  config = _config(
    "cure_joint",
    train_norms=THREE,
    l2_variant="certified",
    lambda_l2=0.4,
    **{"cure.weights": weights},
  )
  loss, _ = _loss(config, setup)
  losses = _by_hand(config, setup)
  expected = sum(w * jnp.mean(losses[n]) for w, n in zip(weights, THREE))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_three_norm_random_gives_each_norm_a_third_of_the_batch(setup):
  variables, batch, ctx = setup
  config = _config(
    "cure_random", train_norms=THREE, l2_variant="certified", lambda_l2=0.4
  )
  loss, _ = _loss(config, setup)
  parts = multi_norm.random_partition_over(
    jax.random.split(ctx.rng, 3)[2], batch.labels.shape[0], 3
  )
  total = 0.0
  for norm, idx in zip(THREE, parts):
    part = Batch(batch.images[idx], batch.labels[idx])
    total += jnp.sum(_by_hand(config, setup, part)[norm])
  np.testing.assert_allclose(loss, total / batch.labels.shape[0], rtol=1e-5)


@jax.jit
def _l1_losses_by_hand(variables, batch, ctx):
  """The mean CROWN-IBP and certified small-ball l1 losses (jitted like the
  objective: eagerly, each attack step's operations compile one by one)."""
  network = Network(MODEL.apply, variables, 10)
  crown = robust_losses.l1_crown_ibp(
    network, batch.images, batch.labels, ctx.eps_l1
  ).loss.mean()
  small = robust_losses.l1_certified(
    network,
    batch.images,
    batch.labels,
    ctx.eps_l1,
    lam=0.1,
    key=jax.random.fold_in(ctx.rng, 3),
    pgd_steps=2,
  ).loss.mean()
  return crown, small


def test_l1_method_trains_the_chosen_certified_l1_loss(setup):
  expected_crown, expected_small = _l1_losses_by_hand(*setup)
  crown, _ = _loss(_config("l1"), setup)
  np.testing.assert_allclose(crown, expected_crown, rtol=1e-5)
  small, _ = _loss(_config("l1", l1_variant="certified", lambda_l1=0.1), setup)
  np.testing.assert_allclose(small, expected_small, rtol=1e-5)


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    (dict(train_norms=("linf",)), "train_norms"),
    (dict(train_norms=("linf", "l3")), "train_norms"),
    (dict(train_norms=THREE, **{"cure.weights": (0.5, 0.5)}), "one weight"),
    (dict(l1_variant="dense"), "l1_variant"),
    (dict(train_norms=THREE, bn_moments="midpoint"), "midpoint"),
  ],
)
def test_bad_three_norm_settings_fail_when_the_objective_is_built(
  overrides, message
):
  with pytest.raises(ValueError, match=message):
    make_objective(_config("cure_max", **overrides), MODEL)
