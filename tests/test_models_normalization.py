"""Tests for cure_jax.models.normalization."""

import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.models.normalization import INPUT_NORMALIZATION, normalize_input


def test_normalizes_channels_last():
  x = jnp.array([[[[0.5, 1.0, 0.0]]]])  # [1, 1, 1, 3]
  y = normalize_input(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
  np.testing.assert_allclose(y, [[[[0.0, 2.0, -0.5]]]])


def test_none_is_identity():
  x = jnp.arange(6.0).reshape(1, 2, 3, 1)
  assert normalize_input(x, None, None) is x


def test_reference_constants():
  assert INPUT_NORMALIZATION["mnist"] is None
  mean, std = INPUT_NORMALIZATION["cifar10"]
  assert mean == (0.4914, 0.4822, 0.4465) and std == (0.2023, 0.1994, 0.2010)
  mean, std = INPUT_NORMALIZATION["tinyimagenet"]
  assert mean == (0.4802, 0.4481, 0.3975) and std == (0.2302, 0.2265, 0.2262)


@pytest.mark.parametrize(
  "mean, std, match",
  [
    ((0.5,), None, "both mean and std"),
    (None, (0.5,), "both mean and std"),
    ((0.5, 0.5), (0.5, 0.5), "2 means and 2 stds but the input has 3"),
    ((0.5, 0.5, 0.5), (0.5, 0.0, 0.5), "positive"),
  ],
)
def test_errors(mean, std, match):
  with pytest.raises(ValueError, match=match):
    normalize_input(jnp.ones((1, 2, 2, 3)), mean, std)
