"""Tests for cure_jax/attacks/norms.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.attacks import norms


def test_norm_per_example_hand_values():
  x = jnp.array([[[3.0, -4.0]], [[0.0, 0.5]]])  # [B=2, 1, 2]
  np.testing.assert_allclose(norms.norm_per_example(x, "linf"), [4.0, 0.5])
  np.testing.assert_allclose(norms.norm_per_example(x, "l2"), [5.0, 0.5])
  np.testing.assert_allclose(norms.norm_per_example(x, "l1"), [7.0, 0.5])


def test_per_example_broadcasts_scalars_and_vectors():
  x = jnp.zeros((3, 2, 5))
  assert norms.per_example(0.5, x, "eps").shape == (1, 1, 1)
  radius = norms.per_example(jnp.array([0.0, 1.0, 2.0]), x, "eps")
  assert radius.shape == (3, 1, 1) and radius.dtype == x.dtype
  np.testing.assert_array_equal(radius[:, 0, 0], [0.0, 1.0, 2.0])


def test_per_example_skips_the_sign_check_for_traced_values():
  x = jnp.zeros((2, 3))
  traced = jax.jit(lambda e: norms.per_example(e, x, "eps"))(-1.0)
  assert traced.shape == (1, 1)  # No host sync inside jit: no check.


def test_clip_to_domain():
  x = jnp.array([-1.0, 0.5, 2.0])
  np.testing.assert_array_equal(
    norms.clip_to_domain(x, (0.0, 1.0)), [0.0, 0.5, 1.0]
  )
  np.testing.assert_array_equal(norms.clip_to_domain(x, None), x)


def test_check_count_accepts_python_and_numpy_integers_only():
  assert norms.check_count("steps", np.int64(8), minimum=0) == 8
  for bad in (True, 8.0, -1):
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
      norms.check_count("steps", bad, minimum=0)


def test_bad_arguments_raise_clear_errors():
  x = jnp.zeros((3, 4))
  with pytest.raises(ValueError, match=r"Unknown norm 'inf': use one of"):
    norms.check_norm("inf")
  with pytest.raises(ValueError, match="step_size must be non-negative"):
    norms.per_example(jnp.array([0.1, -0.1, 0.2]), x, "step_size")
  with pytest.raises(ValueError, match="eps must be non-negative, got nan"):
    norms.per_example(float("nan"), x, "eps")
  with pytest.raises(ValueError, match=r"shape \(3, 1\) does not fit"):
    norms.per_example(jnp.ones((3, 1)), x, "eps")
  with pytest.raises(ValueError, match="domain lower bound 2 exceeds"):
    norms.check_domain((2, 1))
  with pytest.raises(ValueError, match="domain must be None or a pair"):
    norms.check_domain(1.0)
