"""The verifier benchmark: its workers, its table, and auto_LiRPA absent.

auto_LiRPA is never installed for the tests: its columns must say so.
"""

import numpy as np

from cure_jax.benchmarks import verifier


def test_a_run_without_auto_lirpa_reports_ours_and_says_why_not_theirs():
  results = verifier.run(
    models=("small_cnn",),
    batch=2,
    methods=("crown_ibp",),
    lirpa_python="/nonexistent/python",
    timeout=600,
  )
  row = results["small_cnn"]["crown_ibp"]
  ours, theirs = row["cure_jax"], row["auto_LiRPA"]
  assert "error" not in ours, ours
  assert ours["first_s"] > 0 and ours["steady_s"] > 0
  assert 1 <= ours["calls"] <= verifier.REPEAT_CALLS
  assert np.isfinite(ours["mean_margin"])
  assert theirs == {"error": "skipped: /nonexistent/python not found"}
  table = verifier.table(results, batch=2)
  assert "| small_cnn | crown_ibp |" in table
  assert "skipped: /nonexistent/python not found" in table


def test_the_table_gives_seconds_per_point_and_the_ratio():
  results = {
    "cnn7": {
      "crown": {
        "cure_jax": dict(
          first_s=4.0, steady_s=1.0, calls=5, peak_mb=900.0, mean_margin=-0.5
        ),
        "auto_LiRPA": dict(
          first_s=6.0, steady_s=3.0, calls=5, peak_mb=800.0, mean_margin=-0.5
        ),
      },
      "alpha_crown": {
        "cure_jax": dict(error="timed out after 10 s"),
        "auto_LiRPA": dict(
          first_s=6.0, steady_s=3.0, calls=1, peak_mb=800.0, mean_margin=-0.4
        ),
      },
    }
  }
  lines = verifier.table(results, batch=4).splitlines()
  assert lines[2] == (
    "| cnn7 | crown | 0.250 (1.000) | 0.750 (1.500) | 3.00× | 900 | 800 | "
    "-0.500 / -0.500 |"
  )
  assert "timed out after 10 s" in lines[3] and "| — |" in lines[3]


def test_unknown_methods_are_refused():
  try:
    verifier._checked_methods("crown,beta_crown")
  except SystemExit as stop:
    assert "beta_crown" in str(stop)
  else:
    raise AssertionError("an unknown method was accepted")
