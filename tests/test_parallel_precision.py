"""Tests for cure_jax.parallel.precision."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import parallel

# 1 + 2^-10 is a float32 but not a bfloat16 (8 mantissa bits): it rounds to 1.
JUST_ABOVE_ONE = np.float32(1 + 2**-10)


def test_policies_by_name():
  assert (
    parallel.get_policy("float32")
    == parallel.FLOAT32
    == (jnp.float32, jnp.float32, jnp.float32)
  )
  assert (
    parallel.get_policy("bfloat16")
    == parallel.MIXED_BFLOAT16
    == (jnp.float32, jnp.bfloat16, jnp.float32)
  )
  assert parallel.get_policy("mixed_bfloat16") == parallel.MIXED_BFLOAT16
  assert parallel.CERTIFICATION == parallel.FLOAT32


@pytest.mark.parametrize(
  "name, message",
  [("float16", "float16 needs loss scaling"), ("fp8", "Unknown precision")],
)
def test_unknown_policy_is_explained(name, message):
  with pytest.raises(ValueError, match=message):
    parallel.get_policy(name)


def test_cast_floating_casts_only_floating_arrays():
  tree = {
    "w": jnp.ones(2),
    "x": np.ones(2, np.float64),
    "label": jnp.arange(2),
    "mask": np.array([True]),
    "key": jax.random.key(0),
    "eps": 0.5,
  }
  cast = parallel.cast_floating(tree, jnp.bfloat16)
  assert cast["w"].dtype == cast["x"].dtype == jnp.bfloat16
  assert cast["label"].dtype == tree["label"].dtype
  assert cast["mask"].dtype == np.bool_
  assert cast["key"] is tree["key"] and cast["eps"] is tree["eps"]


def test_policy_casts_in_each_direction():
  policy = parallel.MIXED_BFLOAT16
  x = jnp.array([JUST_ABOVE_ONE])
  computed = policy.cast_to_compute(x)
  assert computed.dtype == jnp.bfloat16 and float(computed[0]) == 1.0
  assert policy.cast_to_output(computed).dtype == jnp.float32
  assert policy.cast_to_param(computed).dtype == jnp.float32


class DenseBatchNorm(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.Dense(1, kernel_init=nn.initializers.ones)(x)
    return nn.BatchNorm(use_running_average=not train)(y), y


def _variables():
  return DenseBatchNorm().init(jax.random.key(0), jnp.ones((1, 1)), train=False)


def test_float32_policy_returns_apply_unchanged():
  apply = DenseBatchNorm().apply
  assert parallel.apply_with_policy(apply, parallel.FLOAT32) is apply


def test_mixed_apply_computes_in_bfloat16_and_returns_float32():
  variables = _variables()
  x = jnp.array([[JUST_ABOVE_ONE]])
  apply = parallel.apply_with_policy(
    DenseBatchNorm().apply, parallel.MIXED_BFLOAT16
  )
  (_, dense), mutated = apply(variables, x, train=True, mutable=["batch_stats"])
  # kernel 1, bias 0: float32 gives 1 + 2^-10, bfloat16 compute gives 1.
  assert dense.dtype == jnp.float32 and float(dense[0, 0]) == 1.0
  (_, dense32), _ = DenseBatchNorm().apply(
    variables, x, train=True, mutable=["batch_stats"]
  )
  assert float(dense32[0, 0]) == JUST_ABOVE_ONE
  stats = mutated["batch_stats"]["BatchNorm_0"]
  assert stats["mean"].dtype == stats["var"].dtype == jnp.float32


def test_mixed_apply_casts_params_but_not_other_collections():
  seen = {}

  def spy_apply(variables, x):
    seen.update(jax.tree_util.tree_map(lambda v: v.dtype, variables), x=x.dtype)
    return x

  variables = _variables()
  parallel.apply_with_policy(spy_apply, parallel.MIXED_BFLOAT16)(
    variables, jnp.ones(1)
  )
  assert seen["x"] == jnp.bfloat16
  assert seen["params"]["Dense_0"]["kernel"] == jnp.bfloat16
  assert seen["batch_stats"]["BatchNorm_0"]["mean"] == jnp.float32


def test_gradients_of_mixed_apply_are_float32_and_close_to_float32():
  variables = _variables()
  x = jax.random.normal(jax.random.key(1), (8, 1))

  def loss(params, policy):
    apply = parallel.apply_with_policy(DenseBatchNorm().apply, policy)
    (out, dense), _ = apply(
      {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
    )
    return jnp.mean(dense**2 + out * x)

  grad_fn = jax.jit(jax.grad(loss), static_argnums=1)
  grads16 = grad_fn(variables["params"], parallel.MIXED_BFLOAT16)
  grads32 = grad_fn(variables["params"], parallel.FLOAT32)
  for g16, g32 in zip(
    jax.tree_util.tree_leaves(grads16), jax.tree_util.tree_leaves(grads32)
  ):
    assert g16.dtype == jnp.float32 and np.all(np.abs(g32) > 0.1)
    np.testing.assert_allclose(g16, g32, rtol=1e-2)
    assert not np.array_equal(g16, g32)  # Computed in bfloat16 indeed.


def test_certification_precision_asks_for_full_float32_matmuls():
  with parallel.certification_precision():
    assert jax.config.jax_default_matmul_precision == "highest"
  assert jax.config.jax_default_matmul_precision != "highest"


@pytest.mark.parametrize("method", ["cure_max"])  # PGD + two IBP passes
def test_mixed_precision_train_step_computes_in_bfloat16_keeps_float32_state(
  method,
):
  import pathlib  # pylint: disable=g-import-not-at-top

  from cure_jax import config_schema  # pylint: disable=g-import-not-at-top
  from cure_jax.models import build_model  # pylint: disable=g-import-not-at-top
  from cure_jax.objectives.base import Batch  # pylint: disable=g-import-not-at-top
  from cure_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from cure_jax.train import step as step_lib

  mnist = pathlib.Path(__file__).resolve().parents[1] / "configs" / "mnist.py"
  config = config_schema.load_config(f"{mnist}:cpu=True,method={method}")
  config.unlock()
  config_schema.apply_overrides(
    config,
    {
      "natural_epochs": 0,
      "eps_ramp_start": 0,
      "eps_ramp_end": 1,
      "pgd_steps": 2,
    },
  )
  model = build_model(config)
  optimizer = state_lib.make_optimizer(config, 10)
  sched = step_lib.make_schedules(config, 10)
  phase = step_lib.phase_at(config, sched, 20)  # after the ramp
  state = state_lib.create_train_state(config, model, optimizer, (28, 28, 1))
  x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
  batch = Batch(x, jnp.arange(8) % 10)
  state = state._replace(step=jnp.asarray(20, state.step.dtype))
  steps = {
    mixed: jax.jit(
      step_lib.make_train_step(
        config,
        parallel.precision.training_model(model, mixed),
        optimizer,
        sched,
        phase,
      )
    )
    for mixed in (False, True)
  }
  jaxpr = str(jax.make_jaxpr(steps[True])(state, batch))
  assert "bf16" in jaxpr and "conv_general_dilated" in jaxpr
  assert "bf16" not in str(jax.make_jaxpr(steps[False])(state, batch))
  results = {mixed: fn(state, batch) for mixed, fn in steps.items()}
  new_state, metrics = results[True]
  for leaf in jax.tree.leaves(
    (new_state.params, new_state.batch_stats, new_state.opt_state)
  ):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  assert metrics["loss"].dtype == jnp.float32
  loss_32, loss_16 = float(results[False][1]["loss"]), float(metrics["loss"])
  assert np.isfinite(loss_16) and loss_16 != loss_32
  assert abs(loss_16 - loss_32) < 0.05 * abs(loss_32)
