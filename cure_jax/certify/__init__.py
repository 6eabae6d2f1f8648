"""Certification of trained models: bound cascade, PGD, reports.

  result = certify_batch(model.apply, variables, x, y, norm='linf', eps=0.1,
                         num_classes=10)   # IBP → CROWN → α-CROWN
  records, summary = evaluate(model.apply, variables, images, labels,
                              radii={'linf': 0.1, 'l2': 0.5, 'l1': 1.0},
                              num_classes=10)
  write_report(workdir, records, summary)   # certify.csv, certify.json

``evaluate(..., radius_search=RadiusSearch())`` also finds every point's
largest certified and PGD radius (`radii`), the data of accuracy-against-ε
curves (``python -m cure_jax.plot RUN_DIR``).

A point counts as certified for a norm when it is correctly classified and
every margin lower bound over the ball ∩ [0, 1] is positive; for the union
(docs/method.md §1) when that holds for every norm evaluated.
"""

from cure_jax.certify.branch_and_bound import BaBSettings, verify_point
from cure_jax.certify.cascade import (
  BAB_STAGE,
  BALLS,
  BOUND_METHODS,
  DEFAULT_BOUND_METHODS,
  NORMS,
  NOT_CERTIFIED,
  CascadeResult,
  StageReport,
  bound_margins,
  certify_batch,
  gather_size,
  predict,
)
from cure_jax.certify.empirical import (
  PGDSettings,
  check_pgd_settings,
  pgd_robust,
)
from cure_jax.certify.evaluate import evaluate
from cure_jax.certify.memory_budget import MemoryBudgetError
from cure_jax.certify.radii import RadiusSearch, certified_radii, pgd_radii
from cure_jax.certify.report import (
  STAGE_NONE,
  Records,
  build_records,
  format_radius,
  format_table,
  read_csv,
  read_json,
  record_columns,
  summarize,
  write_csv,
  write_json,
  write_report,
)

__all__ = (
  "BAB_STAGE",
  "BALLS",
  "BaBSettings",
  "MemoryBudgetError",
  "CascadeResult",
  "DEFAULT_BOUND_METHODS",
  "BOUND_METHODS",
  "NORMS",
  "NOT_CERTIFIED",
  "PGDSettings",
  "RadiusSearch",
  "Records",
  "STAGE_NONE",
  "StageReport",
  "bound_margins",
  "build_records",
  "certified_radii",
  "certify_batch",
  "check_pgd_settings",
  "evaluate",
  "format_radius",
  "format_table",
  "gather_size",
  "pgd_radii",
  "pgd_robust",
  "predict",
  "read_csv",
  "read_json",
  "record_columns",
  "summarize",
  "verify_point",
  "write_csv",
  "write_json",
  "write_report",
)
