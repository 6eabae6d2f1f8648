"""PGD adversarial training, the empirical-robustness baseline.

Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks" (ICLR 2018): minimize the cross-entropy at
an approximate inner maximizer,

  min_θ E max_{x' ∈ B_p(x, ε) ∩ [0, 1]} CE(f_θ(x'), y),

found by PGD on the cross-entropy from a uniform random start in the ball.
The attack point is a constant for autodiff (Danskin's theorem: the gradient
at the maximizer is the gradient of the max).
"""

from typing import NamedTuple

import jax

from cure_jax.attacks import pgd
from cure_jax.objectives.base import DOMAIN, Network, cross_entropy


class AdversarialLoss(NamedTuple):
  """Per-example adversarial training loss and the logits it comes from.

  Attributes:
    loss: [B] cross-entropy at the PGD point.
    logits: [B, K] logits at the PGD point (label order, not worst-case);
      ``argmax == label`` is empirical robustness, not a certificate.
  """

  loss: jax.Array
  logits: jax.Array


def pgd_training_loss(
  network: Network,
  images: jax.Array,
  labels: jax.Array,
  *,
  norm: str,
  eps,
  steps: int,
  step_size,
  key: jax.Array,
  restarts: int = 1,
) -> AdversarialLoss:
  """Cross-entropy at a PGD point in B_p(x, ε) ∩ [0, 1] (Madry et al., 2018).

  Args:
    network: the model; the attack and the loss both use
      ``network.logits`` (BatchNorm as a fixed affine map on the clean
      batch's moments), so the examples are attacked independently.
    images: [B, H, W, C] clean images in [0, 1].
    labels: [B] integer labels.
    norm: threat model, ``'linf'`` or ``'l2'`` (``'l1'`` works too).
    eps: ball radius, scalar or [B].
    steps: PGD steps per restart.
    step_size: the ``norm``-length of a step (l∞: α·sign(g); l2:
      α·g/‖g‖_2), scalar or [B].
    key: PRNG key of the random start.
    restarts: random restarts; the highest-loss point is kept.

  Returns:
    An `AdversarialLoss`; the gradient reaches the parameters through
    ``network.variables`` only.

  Raises:
    ValueError: for an unknown ``norm``, negative ``eps``/``step_size`` or
      malformed inputs (from `cure_jax.attacks.pgd`).
  """
  adversarial = pgd(
    network.logits,
    images,
    labels,
    norm=norm,
    eps=eps,
    steps=steps,
    step_size=step_size,
    key=key,
    restarts=restarts,
    random_start=True,
    loss="ce",
    domain=DOMAIN,
  )
  logits = network.logits(adversarial)
  return AdversarialLoss(loss=cross_entropy(logits, labels), logits=logits)
