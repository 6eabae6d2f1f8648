"""Tests for cure_jax/attacks/losses.py."""

import math

import jax
import numpy as np
import pytest

from cure_jax.attacks import losses

LOGITS = np.array(
  [[2.0, 0.0, -1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]], np.float32
)
LABELS = np.array([0, 0, 1])


def test_cross_entropy_hand_values():
  log_z = [
    math.log(math.exp(2) + 1 + math.exp(-1)),
    math.log(1 + math.exp(3) + math.exp(1)),
    math.log(2 * math.e + 1),
  ]
  expected = [log_z[0] - 2.0, log_z[1] - 0.0, log_z[2] - 1.0]
  np.testing.assert_allclose(
    jax.jit(losses.cross_entropy)(LOGITS, LABELS), expected, rtol=1e-6
  )


def test_margin_hand_values_and_sign():
  margins = jax.jit(losses.margin)(LOGITS, LABELS)
  np.testing.assert_array_equal(margins, [0.0 - 2.0, 3.0 - 0.0, 1.0 - 1.0])
  # Example 2 ties classes 0 and 1: argmax picks 0, so label 1 is beaten.
  np.testing.assert_array_equal(
    losses.misclassified(LOGITS, LABELS), [False, True, True]
  )


def test_is_adversarial_uses_the_model():
  weights = np.array([[1.0, -1.0]], np.float32)  # Class 0 iff x > 0.
  logits_fn = lambda x: x @ weights
  x_adv = np.array([[0.5], [-0.5], [2.0]], np.float32)
  np.testing.assert_array_equal(
    losses.is_adversarial(logits_fn, x_adv, np.array([0, 0, 1])),
    [False, True, True],
  )


def test_unknown_loss_raises_clear_error():
  assert losses.get_attack_loss("margin") is losses.margin
  with pytest.raises(ValueError, match=r"Unknown attack loss 'cw': use one"):
    losses.get_attack_loss("cw")
