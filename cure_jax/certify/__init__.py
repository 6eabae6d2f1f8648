"""Certification of trained models: bound cascade, PGD, reports.

  result = certify_batch(model.apply, variables, x, y, norm='linf', eps=0.1,
                         num_classes=10)   # IBP → CROWN → α-CROWN
  records, summary = evaluate(model.apply, variables, images, labels,
                              radii={'linf': 0.1, 'l2': 0.5, 'l1': 1.0},
                              num_classes=10)
  write_report(workdir, records, summary)   # certify.csv, certify.json

A point counts as certified for a norm when it is correctly classified and
every margin lower bound over the ball ∩ [0, 1] is positive; for the union
(spec §1) when that holds for every norm evaluated.
"""

from cure_jax.certify.cascade import BALLS
from cure_jax.certify.cascade import bound_margins
from cure_jax.certify.cascade import CascadeResult
from cure_jax.certify.cascade import certify_batch
from cure_jax.certify.cascade import DEFAULT_METHODS
from cure_jax.certify.cascade import gather_size
from cure_jax.certify.cascade import METHODS
from cure_jax.certify.cascade import NOT_CERTIFIED
from cure_jax.certify.cascade import NORMS
from cure_jax.certify.cascade import predict
from cure_jax.certify.cascade import StageReport
from cure_jax.certify.empirical import check_pgd_settings
from cure_jax.certify.empirical import PGDSettings
from cure_jax.certify.empirical import pgd_robust
from cure_jax.certify.evaluate import evaluate
from cure_jax.certify.report import build_records
from cure_jax.certify.report import format_radius
from cure_jax.certify.report import format_table
from cure_jax.certify.report import read_csv
from cure_jax.certify.report import read_json
from cure_jax.certify.report import record_columns
from cure_jax.certify.report import Records
from cure_jax.certify.report import STAGE_NONE
from cure_jax.certify.report import summarize
from cure_jax.certify.report import write_csv
from cure_jax.certify.report import write_json
from cure_jax.certify.report import write_report

__all__ = (
    "BALLS",
    "CascadeResult",
    "DEFAULT_METHODS",
    "METHODS",
    "NORMS",
    "NOT_CERTIFIED",
    "PGDSettings",
    "Records",
    "STAGE_NONE",
    "StageReport",
    "bound_margins",
    "build_records",
    "certify_batch",
    "check_pgd_settings",
    "evaluate",
    "format_radius",
    "format_table",
    "gather_size",
    "pgd_robust",
    "predict",
    "read_csv",
    "read_json",
    "record_columns",
    "summarize",
    "write_csv",
    "write_json",
    "write_report",
)
