"""The conv_transpose benchmark: both statements timed, compared and named."""

import pytest

from cure_jax.benchmarks import conv_transpose as benchmark


def test_times_and_compares_both_statements():
  shrinking = benchmark.Geometry("valid", 4, 9, 2, 3, 3, 1, 0)
  same = benchmark.Geometry("same", 4, 9, 2, 3, 3, 1, 1)
  for geometry, uses_rows in ((shrinking, True), (same, False)):
    result = benchmark.time_geometry(geometry, repeats=1)
    assert result["relative_difference"] < 1e-5
    assert result["jax_ms"] > 0 and result["rows_ms"] > 0
    assert result["speedup"] > 0
    assert result["pullback_uses_rows"] is uses_rows


def test_main_prints_a_row_per_chosen_geometry(capsys):
  results = benchmark.main(
    ["--only", "small_cnn_conv1_output_pass", "--repeats", "1"]
  )
  assert [r["name"] for r in results] == ["small_cnn_conv1_output_pass"]
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3 and "| kernel rows |" in lines[-1]


def test_unknown_geometry_is_an_error(capsys):
  with pytest.raises(SystemExit):
    benchmark.main(["--only", "cnn9"])
  assert "unknown geometry ['cnn9']" in capsys.readouterr().err
