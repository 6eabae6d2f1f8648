"""Certification beyond l_p: adversarial patches and geometric transformations.

  threats = [patch_threat(2, (28, 28)),
             geometric_threat('rotation', {'rotation': 15.0}, 30, 61)]
  records, summary = evaluate_threats(model.apply, variables, images, labels,
                                      threats, num_classes=10)

or, for a trained run, ``python -m cure_jax.certify.beyond_lp --config=...
--workdir=...`` (see `__main__`).
"""

from cure_jax.certify.beyond_lp.threat_eval import (
  certify_checkpoint_beyond_lp,
  evaluate_threats,
  format_threat_table,
)
from cure_jax.certify.beyond_lp.threats import (
  FAMILY_DESCRIPTIONS,
  Threat,
  geometric_threat,
  patch_threat,
  threats_from_config,
)

__all__ = (
  "FAMILY_DESCRIPTIONS",
  "Threat",
  "certify_checkpoint_beyond_lp",
  "evaluate_threats",
  "format_threat_table",
  "geometric_threat",
  "patch_threat",
  "threats_from_config",
)
