"""Tests for cure_jax/objectives/objective.py: how the clean pass enters the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.bounds import LinfBall, ibp, margin_spec
from cure_jax.config_schema import TRAINING_METHODS, load_config
from cure_jax.models import ConvNet
from cure_jax.objectives import regularizers, robust_losses
from cure_jax.objectives.base import (
  Batch,
  Network,
  StepContext,
  clean_pass,
  moment_subset,
  robust_cross_entropy,
)
from cure_jax.objectives.objective import (
  ROBUST_TERMS,
  make_objective,
  objective_options,
)

MODEL = ConvNet(
  num_classes=10,
  conv_widths=(4, 8),
  conv_strides=(1, 2),
  dense_widths=(16,),
  batch_norm=True,
)


def _config(**overrides):
  config = load_config("configs/mnist.py:cpu=True,method=ibp")
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope="module")
def setup():
  key_x, key_y, key_init = jax.random.split(jax.random.key(0), 3)
  batch = Batch(
    jax.random.uniform(key_x, (8, 12, 12, 1)),
    jax.random.randint(key_y, (8,), 0, 10),
  )
  variables = MODEL.init(key_init, batch.images, train=False)

  def ctx(kappa):
    return StepContext(
      rng=jax.random.key(3),
      eps_linf=jnp.float32(0.05),
      eps_l2=jnp.float32(0.3),
      kappa=jnp.float32(kappa),
      reg_scale=jnp.float32(0.0),
    )

  return variables["params"], variables["batch_stats"], batch, ctx


def _objective(config, **kwargs):
  """The objective, jitted (op-by-op dispatch of bound passes is slow)."""
  return jax.jit(make_objective(config, MODEL, **kwargs))


def _grads(objective, params, stats, batch, ctx):
  return jax.jit(jax.grad(lambda p: objective(p, stats, batch, ctx)[0]))(params)


def _assert_trees_close(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


def test_kappa_is_zero_gives_the_kappa_weighted_loss_at_kappa_zero(setup):
  params, stats, batch, ctx = setup
  config = _config(warmup_reg=False)
  mixed = _objective(config)
  known = _objective(config, kappa_is_zero=True)
  loss_mixed, (_, metrics_mixed) = mixed(params, stats, batch, ctx(0.0))
  loss_known, (_, metrics_known) = known(params, stats, batch, ctx(0.0))
  np.testing.assert_allclose(loss_known, loss_mixed, rtol=1e-6)
  np.testing.assert_allclose(
    metrics_known["clean_loss"], metrics_mixed["clean_loss"], rtol=1e-6
  )
  _assert_trees_close(
    _grads(known, params, stats, batch, ctx(0.0)),
    _grads(mixed, params, stats, batch, ctx(0.0)),
    rtol=1e-4,
    atol=1e-5,
  )  # two compiled programs: float order


def test_constant_moments_change_the_gradient_only_through_the_moments(setup):
  params, stats, batch, ctx = setup
  through = _objective(_config(warmup_reg=False), kappa_is_zero=True)
  constant = _objective(
    _config(warmup_reg=False, bn_moment_gradients=False), kappa_is_zero=True
  )
  # Same loss value: the moments are the same numbers, only their gradient goes.
  np.testing.assert_allclose(
    constant(params, stats, batch, ctx(0.0))[0],
    through(params, stats, batch, ctx(0.0))[0],
    rtol=1e-6,
  )
  g_through = _grads(through, params, stats, batch, ctx(0.0))
  g_constant = _grads(constant, params, stats, batch, ctx(0.0))
  # The last dense layer sits after every BatchNorm: its gradient is the same.
  _assert_trees_close(
    g_constant["logits"], g_through["logits"], rtol=1e-5, atol=1e-7
  )
  # The first convolution feeds the first BatchNorm's moments: it differs.
  difference = jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))),
    g_constant["conv_0"],
    g_through["conv_0"],
  )
  assert max(jax.tree.leaves(difference)) > 1e-6


def _count_convolutions(jaxpr) -> int:
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == "conv_general_dilated"
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", None)
      if inner is not None and hasattr(inner, "eqns"):
        count += _count_convolutions(inner)
  return count


def _gradient_convolutions(setup, **overrides) -> int:
  """Convolutions in the jaxpr of the κ = 0 objective's parameter gradient."""
  params, stats, batch, ctx = setup
  objective = make_objective(
    _config(warmup_reg=False, **overrides), MODEL, kappa_is_zero=True
  )
  return _count_convolutions(
    jax.make_jaxpr(lambda p: _grads(objective, p, stats, batch, ctx(0.0)))(
      params
    ).jaxpr
  )


def test_constant_moments_leave_no_backward_pass_through_the_clean_pass(setup):
  """With κ = 0 and constant moments the clean pass is forward only.

  The gradient's jaxpr then lacks the clean pass's backward convolutions:
  the weight gradient of the first convolution (its input is data) and the
  input and weight gradients of the second — 3 fewer convolutions.
  """
  through = _gradient_convolutions(setup)
  constant = _gradient_convolutions(setup, bn_moment_gradients=False)
  assert through - constant == 3


def test_moment_subset_takes_every_stride_th_example():
  images = jnp.arange(10.0)[:, None]
  np.testing.assert_array_equal(moment_subset(images, 4)[:, 0], [0, 2, 4, 6])
  np.testing.assert_array_equal(moment_subset(images, 3)[:, 0], [0, 3, 6])
  assert moment_subset(images, 0) is images
  assert moment_subset(images, 10) is images
  assert moment_subset(images, 64) is images


def test_ghost_moments_are_the_subsets_moments_with_their_gradient(setup):
  """bn_moment_examples=m bounds the whole batch with m clean examples' moments.

  Written out by hand: the clean pass on the strided subset, the bounded
  pass (IBP over every example) with its moments; gradients flow through
  them exactly as through the whole batch's moments.
  """
  params, stats, batch, ctx = setup
  ghost = _objective(
    _config(warmup_reg=False, l1_reg=0.0, bn_moment_examples=4),
    kappa_is_zero=True,
  )

  def by_hand(p):
    _, new_stats, moments = clean_pass(MODEL, p, stats, batch.images[::2])
    network = Network(MODEL.apply, {"params": p, "batch_stats": moments}, 10)
    robust = robust_losses.ibp_linf(
      network, batch.images, batch.labels, ctx(0.0).eps_linf
    )
    return robust.loss.mean(), new_stats

  loss, (new_stats, metrics) = ghost(params, stats, batch, ctx(0.0))
  expected_loss, expected_stats = jax.jit(by_hand)(params)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  _assert_trees_close(new_stats, expected_stats, rtol=1e-5, atol=1e-7)
  _assert_trees_close(
    _grads(ghost, params, stats, batch, ctx(0.0)),
    jax.jit(jax.grad(lambda p: by_hand(p)[0]))(params),
    rtol=1e-4,
    atol=1e-6,
  )
  # The whole batch's moments are other numbers: the subset is really used.
  whole, _ = _objective(
    _config(warmup_reg=False, l1_reg=0.0), kappa_is_zero=True
  )(params, stats, batch, ctx(0.0))
  assert abs(float(whole) - float(loss)) > 1e-4 * abs(float(whole))


def test_ghost_moments_leave_the_natural_epochs_on_the_whole_batch(setup):
  """While κ may be positive the clean CE needs every example."""
  params, stats, batch, ctx = setup
  config = _config(warmup_reg=False, bn_moment_examples=4)
  for kappa in (1.0, 0.3):
    ghost = _objective(config)(params, stats, batch, ctx(kappa))
    whole = _objective(_config(warmup_reg=False))(
      params, stats, batch, ctx(kappa)
    )
    np.testing.assert_allclose(ghost[0], whole[0], rtol=1e-6)


def _train_mode(v, x):
  return MODEL.apply(v, x, train=True, mutable=["batch_stats"])


def test_midpoint_moments_bound_in_train_mode_without_a_clean_pass(setup):
  """bn_moments='midpoint', written out: IBP of the train-mode model."""
  params, stats, batch, ctx = setup
  objective = _objective(
    _config(warmup_reg=False, l1_reg=0.0, bn_moments="midpoint"),
    kappa_is_zero=True,
  )

  def by_hand(p):
    spec = margin_spec(batch.labels, 10)
    margins, state = ibp(_train_mode, has_aux=True)(
      {"params": p, "batch_stats": stats},
      LinfBall(batch.images, ctx(0.0).eps_linf, domain=(0.0, 1.0)),
      spec=spec,
    )
    return robust_cross_entropy(margins.lower).mean(), state["batch_stats"]

  loss, (new_stats, metrics) = objective(params, stats, batch, ctx(0.0))
  expected_loss, expected_stats = jax.jit(by_hand)(params)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  _assert_trees_close(new_stats, expected_stats, rtol=1e-5, atol=1e-7)
  assert "updated_batch_stats" not in metrics and "linf_certified" in metrics
  _assert_trees_close(
    _grads(objective, params, stats, batch, ctx(0.0)),
    jax.jit(jax.grad(lambda p: by_hand(p)[0]))(params),
    rtol=1e-4,
    atol=1e-6,
  )
  # The running statistics moved: the pass recorded its moments.
  assert float(jnp.max(jnp.abs(new_stats["conv_0_bn"]["mean"]))) > 0


def test_midpoint_moments_drop_the_clean_pass_from_the_gradient(setup):
  """5 fewer convolutions than the reference: the clean pass's 2 forward and
  3 backward ones (no input gradient at the first)."""
  clean = _gradient_convolutions(setup)
  midpoint = _gradient_convolutions(setup, bn_moments="midpoint")
  assert clean - midpoint == 5


def test_midpoint_moments_leave_the_natural_epochs_alone(setup):
  params, stats, batch, ctx = setup
  for kappa in (1.0, 0.3):
    midpoint = _objective(_config(bn_moments="midpoint"))(
      params, stats, batch, ctx(kappa)
    )
    clean = _objective(_config())(params, stats, batch, ctx(kappa))
    np.testing.assert_allclose(midpoint[0], clean[0], rtol=1e-6)


def test_midpoint_moments_with_warmup_regularize_the_train_mode_bounds(setup):
  params, stats, batch, ctx = setup
  context = ctx(0.0)._replace(reg_scale=jnp.float32(0.5))
  objective = _objective(
    _config(l1_reg=0.0, bn_moments="midpoint"), kappa_is_zero=True
  )
  loss, (_, metrics) = objective(params, stats, batch, context)
  input_set = LinfBall(batch.images, context.eps_linf, domain=(0.0, 1.0))
  (_, preactivations), _ = ibp(
    _train_mode, return_preactivations=True, has_aux=True
  )({"params": params, "batch_stats": stats}, input_set)
  expected = regularizers.warmup_regularizer(
    preactivations, input_set.bounding_box().radius.mean()
  )
  np.testing.assert_allclose(metrics["warmup_reg"], expected, rtol=1e-5)
  np.testing.assert_allclose(
    loss, metrics["robust_loss"] + 0.5 * expected, rtol=1e-5
  )


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      dict(method="crown_ibp", bn_moments="midpoint"),
      "bounded passes are all IBP",
    ),
    (dict(method="pgd_linf", bn_moments="midpoint"), "'sabr'"),
    (dict(bn_moments="centre"), r"valid ones are \['clean', 'midpoint'\]"),
  ],
)
def test_bad_bn_moments_name_the_valid_choices(overrides, message):
  with pytest.raises(ValueError, match=message):
    make_objective(_config(**overrides), MODEL, kappa_is_zero=True)


def test_every_term_kind_of_the_method_table_has_its_term():
  kinds = {m.term for m in TRAINING_METHODS.values()} - {None}
  assert kinds == set(ROBUST_TERMS)


@pytest.mark.parametrize("method", list(TRAINING_METHODS))
def test_every_method_builds_an_objective_with_a_finite_loss(setup, method):
  params, stats, batch, ctx = setup
  config = _config(method=method, pgd_steps=1, **{"patch.train_positions": 2})
  objective = make_objective(config, MODEL, kappa_is_zero=True)
  loss, (_, metrics) = jax.jit(objective)(params, stats, batch, ctx(0.0))
  assert np.isfinite(float(loss))
  robust = TRAINING_METHODS[method].term is not None
  assert ("robust_loss" in metrics) == robust


def test_options_are_read_once_from_the_schemas_keys():
  options = objective_options(_config(**{"cure.alpha": 0.25, "l1_reg": 1e-4}))
  assert options.method is TRAINING_METHODS["ibp"]
  assert (options.alpha, options.l1_reg, options.num_classes) == (
    0.25,
    1e-4,
    10,
  )
  assert (options.bn_moments, options.bn_moment_examples) == ("clean", 0)


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(l2_variant="exact"), r"valid ones are \['certified', 'sabr_box'\]"),
    ({"cure.combine": "min"}, r"valid ones are \['joint', 'max', 'random'\]"),
    (
      {
        "method": "cure_random",
        "cure.combine": "random",
        "cure.ba_weight": 1.0,
      },
      "bound alignment needs both bounds",
    ),
  ],
)
def test_bad_options_fail_when_the_objective_is_built(overrides, message):
  with pytest.raises(ValueError, match=message):
    make_objective(_config(**overrides), MODEL)


def test_natural_epochs_compute_no_robust_term(setup):
  params, stats, batch, ctx = setup
  config = _config(warmup_reg=False, l1_reg=0.0)
  loss, (_, metrics) = _objective(config, robust=False)(
    params, stats, batch, ctx(1.0)
  )
  np.testing.assert_allclose(loss, metrics["clean_loss"], rtol=1e-6)
  assert not any(key.startswith("linf") for key in metrics)
  objective = make_objective(config, MODEL, robust=False)
  jaxpr = jax.make_jaxpr(lambda p: objective(p, stats, batch, ctx(1.0)))(params)
  assert _count_convolutions(jaxpr.jaxpr) == 2  # the clean forward pass only
