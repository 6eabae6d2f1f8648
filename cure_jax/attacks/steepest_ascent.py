"""Steepest-ascent directions of the attack loss, one per threat model.

For a loss with gradient g at the current iterate, the steepest ascent
direction of unit l_p norm is argmax_{||d||_p <= 1} g·d:

* l∞: sign(g) — the PGD step of Madry et al., "Towards Deep Learning Models
  Resistant to Adversarial Attacks" (ICLR 2018);
* l2: g / ||g||_2;
* l1: the vertex sign(g_i)·e_i at i = argmax |g_i|. One coordinate per step is
  too slow on images, so we take the sparse l1 step of SLIDE (Tramèr & Boneh,
  "Adversarial Training and Robustness for Multiple Perturbations", NeurIPS
  2019): the k coordinates with the largest |g_i| each move by sign(g_i)/k,
  so ||d||_1 = 1. Coordinates that sit on the domain boundary with g pointing
  out of the domain are excluded before the top-k (as in Croce & Hein,
  "Mind the box: l1-APGD for Sparse Adversarial Attacks on Image
  Classifiers", ICML 2021): the clip would undo their move and waste budget.

A zero gradient gives a zero direction (the iterate stays put).
"""

import jax
import jax.numpy as jnp

from cure_jax.attacks import norms


def linf_direction(grad: jax.Array) -> jax.Array:
  """sign(g): the steepest ascent direction of unit l∞ norm."""
  return jnp.sign(grad)


def l2_direction(grad: jax.Array) -> jax.Array:
  """g / ||g||_2 per example (0 where g = 0)."""
  length = norms.expand_per_example(norms.norm_per_example(grad, "l2"), grad)
  return jnp.where(length > 0, grad / jnp.maximum(length, 1e-30), 0.0)


def l1_num_coordinates(num_features: int, sparsity: float) -> int:
  """How many coordinates a SLIDE step moves: round((1 − sparsity)·D), >= 1."""
  return max(1, int(round((1.0 - sparsity) * num_features)))


def l1_direction(
  grad: jax.Array,
  x_adv: jax.Array,
  domain: norms.Domain = (0.0, 1.0),
  sparsity: float = 0.99,
) -> jax.Array:
  """SLIDE's sparse steepest-ascent direction of unit l1 norm, box-aware.

  Moves the ``round((1 − sparsity)·D)`` (>= 1) coordinates with the largest
  |g| among those not stuck on the domain boundary at ``x_adv`` (SLIDE's
  percentile q = 100·sparsity, sparsity in [0, 1)). Each direction has l1
  norm 1, or is 0 where no coordinate can move.
  """
  if not 0.0 <= sparsity < 1.0:
    raise ValueError(f"l1 sparsity must lie in [0, 1), got {sparsity}.")
  movable = jnp.ones(grad.shape, dtype=bool)
  if domain is not None:
    lo, hi = domain
    movable = ~(((x_adv <= lo) & (grad < 0)) | ((x_adv >= hi) & (grad > 0)))
  score = norms.flatten_examples(jnp.where(movable, jnp.abs(grad), 0.0))
  k = l1_num_coordinates(score.shape[1], sparsity)
  # Min of the top k: slicing the top-k output makes XLA:CPU do a full sort.
  kth_largest = jnp.min(jax.lax.top_k(score, k)[0], axis=1, keepdims=True)
  chosen = (score >= kth_largest) & (score > 0)  # Ties may add coordinates.
  count = jnp.maximum(jnp.sum(chosen, axis=1, keepdims=True), 1)
  direction = jnp.where(chosen, jnp.sign(norms.flatten_examples(grad)), 0.0)
  return (direction / count).reshape(grad.shape)


def ascent_direction(
  grad: jax.Array,
  x_adv: jax.Array,
  *,
  norm: str,
  domain: norms.Domain = (0.0, 1.0),
  l1_sparsity: float = 0.99,
) -> jax.Array:
  """The steepest ascent direction of unit ``norm`` (or zero) for ``grad``;
  ``x_adv`` and ``l1_sparsity`` serve the box-aware l1 step."""
  if norms.check_norm(norm) == "linf":
    return linf_direction(grad)
  if norm == "l2":
    return l2_direction(grad)
  return l1_direction(grad, x_adv, domain, l1_sparsity)
