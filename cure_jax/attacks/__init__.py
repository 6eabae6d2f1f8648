"""Adversarial attacks: PGD in l∞, l2 and l1 balls, SABR's, a sparse l1 attack.

Pure functions in the style of optax: the model enters as a closure
``logits_fn(x) -> logits``, data as arrays, randomness as an explicit PRNG
key; everything is jit-able and vmap-safe::

  logits_fn = lambda x: model.apply(variables, x, train=False)
  x_adv = pgd(logits_fn, x, y, norm='l2', eps=0.5, steps=20,
              step_size=0.1, key=key, loss='margin')
  robust = ~is_adversarial(logits_fn, x_adv, y)

  center = sabr_attack(logits_fn, x, y, eps=8 / 255, key=key)  # docs/method.md §2
  x_l1 = strongest_l1(logits_fn, x, y, eps=1.0, key=key)  # sparse + PGD, worst
"""

from cure_jax.attacks.ball_sampling import (
  random_start,
  sample_ball_perturbation,
)
from cure_jax.attacks.losses import (
  ATTACK_LOSSES,
  cross_entropy,
  get_attack_loss,
  is_adversarial,
  margin,
)
from cure_jax.attacks.norms import NORMS, norm_per_example
from cure_jax.attacks.projected_gradient import BestIterate, pgd
from cure_jax.attacks.projections import (
  project,
  project_l1,
  project_l2,
  project_linf,
  project_onto_l1_ball,
)
from cure_jax.attacks.sabr import (
  sabr_attack,
  sabr_milestones,
  sabr_step_decay,
  sabr_step_sizes,
)
from cure_jax.attacks.sparse_l1 import (
  project_l1_box,
  sparse_l1_attack,
  strongest_l1,
)
from cure_jax.attacks.steepest_ascent import ascent_direction

__all__ = (
  "ATTACK_LOSSES",
  "BestIterate",
  "NORMS",
  "ascent_direction",
  "cross_entropy",
  "get_attack_loss",
  "is_adversarial",
  "margin",
  "norm_per_example",
  "pgd",
  "project",
  "project_l1",
  "project_l2",
  "project_linf",
  "project_l1_box",
  "project_onto_l1_ball",
  "random_start",
  "sabr_attack",
  "sabr_milestones",
  "sabr_step_decay",
  "sabr_step_sizes",
  "sample_ball_perturbation",
  "sparse_l1_attack",
  "strongest_l1",
)
