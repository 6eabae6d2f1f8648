"""Tests for cure_jax.objectives.gradient_projection."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cure_jax.objectives import gradient_projection as gp

BETA = 0.8
# Three parameter tensors, each starting at θ0 with hand-made updates:
#   'agree':    g_c = [1, 0],  g_n = [1, 1]     -> cs = 1/√2 > 0
#   'disagree': g_c = [1, 0],  g_n = [-1, 0.5]  -> cs < 0
#   'still':    g_c = [[2, 1]], g_n = 0         -> cs = 0 (zero norm)
THETA0 = {
  "agree": jnp.array([1.0, -1.0]),
  "nested": {
    "disagree": jnp.array([0.5, 0.5]),
    "still": jnp.array([[3.0, 0.0]]),
  },
}
THETA_C = {
  "agree": jnp.array([2.0, -1.0]),
  "nested": {
    "disagree": jnp.array([1.5, 0.5]),
    "still": jnp.array([[5.0, 1.0]]),
  },
}
THETA_N = {
  "agree": jnp.array([2.0, 0.0]),
  "nested": {
    "disagree": jnp.array([-0.5, 1.0]),
    "still": jnp.array([[3.0, 0.0]]),
  },
}


def _assert_trees_close(got, want, **kwargs):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, **kwargs)


def test_project_reproduces_the_formula_by_hand():
  cs = 1 / math.sqrt(2)
  want = {
    # θ0 + (1 − β)·g_c + β·cs·g_n
    "agree": np.array([1.0, -1.0])
    + 0.2 * np.array([1.0, 0.0])
    + BETA * cs * np.array([1.0, 1.0]),
    # cs < 0: the natural update is dropped, θ0 + (1 − β)·g_c.
    "nested": {
      "disagree": np.array([0.5, 0.5]) + 0.2 * np.array([1.0, 0.0]),
      # g_n = 0: cs = 0, no NaN.
      "still": np.array([[3.0, 0.0]]) + 0.2 * np.array([[2.0, 1.0]]),
    },
  }
  _assert_trees_close(
    gp.project(THETA0, THETA_C, THETA_N, BETA), want, rtol=1e-6
  )


def test_project_endpoints_and_zero_certified_update():
  # β = 0 is certified training alone.
  _assert_trees_close(gp.project(THETA0, THETA_C, THETA_N, 0.0), THETA_C)
  # β = 1 with g_n = g_c: cs = 1, so θ = θ0 + g_n = θc.
  _assert_trees_close(
    gp.project(THETA0, THETA_C, THETA_C, 1.0), THETA_C, rtol=1e-6
  )
  # No certified update: cs = 0 and θ stays θ0 whatever the natural one.
  _assert_trees_close(gp.project(THETA0, THETA0, THETA_N, BETA), THETA0)


def test_cosine_similarity():
  assert gp.cosine_similarity(
    jnp.array([[3.0, 0.0]]), jnp.array([[2.0, 2.0]])
  ) == pytest.approx(1 / math.sqrt(2), rel=1e-6)
  assert gp.cosine_similarity(jnp.zeros(3), jnp.ones(3)) == 0.0
  assert gp.cosine_similarity(jnp.zeros(3), jnp.zeros(3)) == 0.0


def test_project_keeps_dtypes_and_jits():
  theta0 = {"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.zeros(3)}
  theta_c = jax.tree.map(lambda x: x + 0.5, theta0)
  theta_n = jax.tree.map(lambda x: x + 0.25, theta0)
  projected = gp.project(theta0, theta_c, theta_n, BETA)
  assert projected["w"].dtype == jnp.bfloat16
  assert projected["b"].dtype == jnp.float32
  # cs = 1: θ0 + 0.2·0.5 + 0.8·0.25.
  np.testing.assert_allclose(projected["b"], 0.3, rtol=1e-6)
  _assert_trees_close(
    jax.jit(gp.project)(THETA0, THETA_C, THETA_N, BETA),
    gp.project(THETA0, THETA_C, THETA_N, BETA),
    rtol=1e-6,
  )


def test_project_rejects_mismatched_trees_and_beta():
  with pytest.raises(ValueError, match="theta_n must have the structure"):
    gp.project(THETA0, THETA_C, {"agree": THETA_N["agree"]}, BETA)
  with pytest.raises(ValueError, match="theta_c must have the structure"):
    gp.project(
      THETA0, jax.tree.map(lambda x: x[..., :1], THETA_C), THETA_N, BETA
    )
  with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
    gp.project(THETA0, THETA_C, THETA_N, 1.5)


def test_interval_with_sgd_reproduces_project():
  optimizer = optax.sgd(0.1)
  params = THETA0
  opt_state = optimizer.init(params)
  state = gp.init_state(params, opt_state)
  _assert_trees_close(state.anchor_params, params)
  _assert_trees_close(state.natural_params, params)

  grads = [
    jax.tree.map(lambda x: jnp.full_like(x, scale), params)
    for scale in (1.0, -3.0)
  ]
  natural_step = jax.jit(gp.natural_step, static_argnums=2)
  for g in grads:
    state = natural_step(state, g, optimizer)
  # θn = θ0 − 0.1·(1 − 3) = θ0 + 0.2 on every entry; θ0 is kept.
  _assert_trees_close(
    state.natural_params, jax.tree.map(lambda x: x + 0.2, params), rtol=1e-6
  )
  _assert_trees_close(state.anchor_params, THETA0)

  certified = THETA_C  # As if the certified steps had led there.
  new_params, new_state = gp.finish_interval(state, certified, opt_state, BETA)
  _assert_trees_close(
    new_params, gp.project(THETA0, certified, state.natural_params, BETA)
  )
  _assert_trees_close(new_state.anchor_params, new_params)
  _assert_trees_close(new_state.natural_params, new_params)


def test_natural_copy_has_its_own_optimizer_state():
  optimizer = optax.adam(0.01)
  params = {"w": jnp.array([1.0, 2.0])}
  opt_state = optimizer.init(params)
  state = gp.init_state(params, opt_state)
  state = gp.natural_step(state, {"w": jnp.array([1.0, -1.0])}, optimizer)
  # The certified optimizer state is untouched; the natural one counts 1.
  assert int(opt_state[0].count) == 0
  assert int(state.natural_opt_state[0].count) == 1
  # Adam's first step moves each coordinate by lr against the gradient sign.
  np.testing.assert_allclose(state.natural_params["w"], [0.99, 2.01], rtol=1e-6)
  # The next interval restarts the natural copy from the given state.
  _, restarted = gp.finish_interval(state, params, opt_state, BETA)
  assert int(restarted.natural_opt_state[0].count) == 0


def test_init_state_holds_fresh_buffers():
  params = {"w": jnp.arange(3.0)}
  state = gp.init_state(params, optax.sgd(0.1).init(params))
  pointers = {
    x.unsafe_buffer_pointer()
    for x in (params["w"], state.anchor_params["w"], state.natural_params["w"])
  }
  assert len(pointers) == 3
