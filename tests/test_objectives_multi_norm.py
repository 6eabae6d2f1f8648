"""Tests for cure_jax.objectives.multi_norm (Joint, Max, Random)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.objectives import multi_norm

LINF = jnp.array([1.0, 4.0, 0.5, 2.0])
L2 = jnp.array([3.0, 1.0, 0.5, 6.0])


def test_joint_by_hand():
  # mean L∞ = 7.5/4, mean L2 = 10.5/4.
  np.testing.assert_allclose(
    multi_norm.joint(LINF, L2), 0.5 * 7.5 / 4 + 0.5 * 10.5 / 4, rtol=1e-6
  )
  np.testing.assert_allclose(
    multi_norm.joint(LINF, L2, alpha=0.25),
    0.75 * 7.5 / 4 + 0.25 * 10.5 / 4,
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    multi_norm.joint(LINF, L2, alpha=0.0), 7.5 / 4, rtol=1e-6
  )


def test_maximum_is_mean_of_per_example_maximum():
  # max per example: 3, 4, 0.5, 6.
  np.testing.assert_allclose(multi_norm.maximum(LINF, L2), 13.5 / 4, rtol=1e-6)
  # Not the maximum of the means (10.5 / 4).
  assert multi_norm.maximum(LINF, L2) > jnp.maximum(LINF.mean(), L2.mean())


def test_maximum_gradient_follows_the_larger_loss():
  grad_linf, grad_l2 = jax.grad(multi_norm.maximum, argnums=(0, 1))(LINF, L2)
  # Example 2 is a tie: JAX splits the gradient evenly.
  np.testing.assert_allclose(grad_linf, [0, 0.25, 0.125, 0])
  np.testing.assert_allclose(grad_l2, [0.25, 0, 0.125, 0.25])


@pytest.mark.parametrize("batch_size", [1, 2, 7, 8])
def test_random_partition_is_a_partition(batch_size):
  linf_idx, l2_idx = multi_norm.random_partition(jax.random.key(3), batch_size)
  assert linf_idx.shape == ((batch_size + 1) // 2,)  # odd B: l∞ gets one more
  assert l2_idx.shape == (batch_size // 2,)
  together = np.concatenate([linf_idx, l2_idx])
  np.testing.assert_array_equal(np.sort(together), np.arange(batch_size))


def test_random_partition_differs_across_keys_and_repeats_per_key():
  halves = [
    tuple(np.asarray(multi_norm.random_partition(jax.random.key(seed), 16)[0]))
    for seed in range(8)
  ]
  assert len(set(frozenset(half) for half in halves)) > 1
  again = multi_norm.random_partition(jax.random.key(0), 16)[0]
  np.testing.assert_array_equal(again, halves[0])


def test_random_partition_jits_with_static_batch_size():
  partition = jax.jit(multi_norm.random_partition, static_argnums=1)
  for got, want in zip(
    partition(jax.random.key(5), 9),
    multi_norm.random_partition(jax.random.key(5), 9),
  ):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("batch_size", [0, -2, 3.0, True])
def test_random_partition_rejects_bad_batch_size(batch_size):
  with pytest.raises(ValueError, match="positive Python int"):
    multi_norm.random_partition(jax.random.key(0), batch_size)


def test_random_loss_weighs_every_example_by_one_over_batch():
  loss_linf = jnp.array([1.0, 4.0, 0.5, 2.0, 3.0])
  loss_l2 = jnp.array([3.0, 1.0, 0.5, 6.0, 5.0])
  linf_idx, l2_idx = multi_norm.random_partition(jax.random.key(1), 5)
  loss = multi_norm.random_loss(loss_linf[linf_idx], loss_l2[l2_idx])
  in_linf_half = np.isin(np.arange(5), linf_idx)
  want = np.where(in_linf_half, loss_linf, loss_l2).sum() / 5
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  # By hand: halves [1, 4, 0.5] and [6, 1] -> 12.5 / 5.
  np.testing.assert_allclose(
    multi_norm.random_loss(jnp.array([1.0, 4.0, 0.5]), jnp.array([6.0, 1.0])),
    2.5,
    rtol=1e-6,
  )


def test_random_loss_gradient_is_one_over_batch():
  grads = jax.grad(multi_norm.random_loss, argnums=(0, 1))(
    jnp.ones(3), jnp.ones(2)
  )
  np.testing.assert_allclose(np.concatenate(grads), np.full(5, 0.2))


def test_losses_are_jittable_and_differentiable():
  for fn in (multi_norm.joint, multi_norm.maximum, multi_norm.random_loss):
    np.testing.assert_allclose(jax.jit(fn)(LINF, L2), fn(LINF, L2), rtol=1e-6)
    grads = jax.grad(fn, argnums=(0, 1))(LINF, L2)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_bad_shapes_and_alpha_raise():
  with pytest.raises(ValueError, match="per-example losses"):
    multi_norm.joint(LINF, L2[:3])
  with pytest.raises(ValueError, match="per-example losses"):
    multi_norm.maximum(LINF.mean(), L2.mean())
  with pytest.raises(ValueError, match=r"alpha .* \[0, 1\]"):
    multi_norm.joint(LINF, L2, alpha=1.5)
  with pytest.raises(ValueError, match="per-example losses"):
    multi_norm.random_loss(LINF[None], L2)
  with pytest.raises(ValueError, match="both halves are empty"):
    multi_norm.random_loss(jnp.zeros(0), jnp.zeros(0))


# --- N norms ------------------------------------------------------------------

L1 = jnp.array([2.0, 2.0, 0.5, 7.0])
THREE = {"l1": L1, "linf": LINF, "l2": L2}  # Any key order: NORMS order used.


def test_two_norm_forms_are_bit_identical():
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.exponential(size=37), jnp.float32) for _ in "ab")
  for alpha in (0.5, 0.25, 0.0, 1.0, 0.3):
    np.testing.assert_array_equal(
      multi_norm.joint_over(
        {"linf": a, "l2": b}, {"linf": 1 - alpha, "l2": alpha}
      ),
      multi_norm.joint(a, b, alpha),
    )
  np.testing.assert_array_equal(
    multi_norm.maximum_over({"l2": b, "linf": a}), multi_norm.maximum(a, b)
  )
  np.testing.assert_array_equal(
    jax.grad(lambda u, v: multi_norm.maximum_over((u, v)), (0, 1))(LINF, L2),
    jax.grad(multi_norm.maximum, (0, 1))(LINF, L2),
  )  # Including the even split of the tie at example 2.
  for batch_size in (1, 7, 8):
    for got, want in zip(
      multi_norm.random_partition_over(jax.random.key(4), batch_size, 2),
      multi_norm.random_partition(jax.random.key(4), batch_size),
    ):
      np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(
    multi_norm.random_loss_over((a[:19], b[19:])),
    multi_norm.random_loss(a[:19], b[19:]),
  )


def test_joint_over_three_by_hand():
  # Means: l∞ 7.5/4, l2 10.5/4, l1 11.5/4.
  np.testing.assert_allclose(
    multi_norm.joint_over(THREE), (7.5 + 10.5 + 11.5) / 12, rtol=1e-6
  )
  np.testing.assert_allclose(
    multi_norm.joint_over(THREE, {"linf": 0.5, "l2": 0.3, "l1": 0.2}),
    (0.5 * 7.5 + 0.3 * 10.5 + 0.2 * 11.5) / 4,
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    multi_norm.joint_over((LINF, L2, L1), (0.0, 0.0, 1.0)), 11.5 / 4, rtol=1e-6
  )


def test_maximum_over_three_is_the_elementwise_maximum():
  # max per example: 3, 4, 0.5, 7.
  np.testing.assert_allclose(
    multi_norm.maximum_over(THREE), 14.5 / 4, rtol=1e-6
  )
  np.testing.assert_array_equal(
    multi_norm.maximum_over(THREE),
    jnp.mean(jnp.maximum(jnp.maximum(LINF, L2), L1)),
  )
  grads = jax.grad(lambda t: multi_norm.maximum_over(t))(THREE)
  # Example 0: l2 (3) wins; 1: l∞; 2: a three-way tie, split evenly; 3: l1.
  np.testing.assert_allclose(grads["linf"], [0, 0.25, 0.25 / 3, 0])
  np.testing.assert_allclose(grads["l2"], [0.25, 0, 0.25 / 3, 0])
  np.testing.assert_allclose(grads["l1"], [0, 0, 0.25 / 3, 0.25])


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 8, 128])
def test_random_partition_over_three_is_a_partition(batch_size):
  parts = multi_norm.random_partition_over(jax.random.key(6), batch_size, 3)
  assert len(parts) == 3
  sizes = [len(part) for part in parts]
  assert sizes == list(multi_norm.part_sizes(batch_size, 3))
  assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
  together = np.concatenate(parts)
  np.testing.assert_array_equal(np.sort(together), np.arange(batch_size))


def test_random_partition_over_three_is_random_and_jits():
  firsts = {
    frozenset(
      np.asarray(multi_norm.random_partition_over(jax.random.key(s), 12, 3)[0])
    )
    for s in range(8)
  }
  assert len(firsts) > 1
  partition = jax.jit(multi_norm.random_partition_over, static_argnums=(1, 2))
  for got, want in zip(
    partition(jax.random.key(2), 10, 3),
    multi_norm.random_partition_over(jax.random.key(2), 10, 3),
  ):
    np.testing.assert_array_equal(got, want)


def test_random_loss_over_three_weighs_every_example_by_one_over_batch():
  losses = {
    n: jnp.arange(7.0) + 10 * i for i, n in enumerate(("linf", "l2", "l1"))
  }
  parts = multi_norm.random_partition_over(jax.random.key(1), 7, 3)
  on_parts = {n: losses[n][idx] for n, idx in zip(("linf", "l2", "l1"), parts)}
  owner = np.zeros(7, int)
  for i, idx in enumerate(parts):
    owner[np.asarray(idx)] = i
  want = np.asarray(
    [losses[("linf", "l2", "l1")[o]][j] for j, o in enumerate(owner)]
  )
  np.testing.assert_allclose(
    multi_norm.random_loss_over(on_parts), want.mean(), rtol=1e-6
  )
  grads = jax.grad(multi_norm.random_loss_over)(on_parts)
  np.testing.assert_allclose(
    np.concatenate([grads[n] for n in ("linf", "l2", "l1")]), np.full(7, 1 / 7)
  )


def test_over_functions_jit():
  for fn in (multi_norm.joint_over, multi_norm.maximum_over):
    np.testing.assert_allclose(jax.jit(fn)(THREE), fn(THREE), rtol=1e-6)


def test_over_functions_reject_bad_input():
  with pytest.raises(ValueError, match="unknown keys"):
    multi_norm.maximum_over({"linf": LINF, "l0": L2})
  with pytest.raises(ValueError, match="per-example losses"):
    multi_norm.maximum_over((LINF, L2[:3], L1))
  with pytest.raises(ValueError, match="empty"):
    multi_norm.joint_over({})
  with pytest.raises(ValueError, match="sum to 1"):
    multi_norm.joint_over(THREE, {"linf": 0.5, "l2": 0.5, "l1": 0.5})
  with pytest.raises(ValueError, match="keyed .* like the losses"):
    multi_norm.joint_over(THREE, {"linf": 0.5, "l2": 0.5})
  with pytest.raises(ValueError, match="one weight per loss"):
    multi_norm.joint_over((LINF, L2, L1), (0.5, 0.5))
  with pytest.raises(ValueError, match="num_parts"):
    multi_norm.random_partition_over(jax.random.key(0), 8, 0)
  with pytest.raises(ValueError, match="positive Python int"):
    multi_norm.random_partition_over(jax.random.key(0), 0, 3)
  with pytest.raises(ValueError, match="every part is empty"):
    multi_norm.random_loss_over((jnp.zeros(0),) * 3)
