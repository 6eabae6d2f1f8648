"""The conv_transpose benchmark: the statements timed, compared and named."""

import pytest

from cure_jax.benchmarks import conv_transpose as benchmark


def test_times_and_compares_the_statements():
  shrinking = benchmark.Geometry("valid", 4, 9, 2, 3, 3, 1, 0)
  same = benchmark.Geometry("same", 4, 9, 2, 3, 3, 1, 1)
  first = benchmark.Geometry("first", 4, 9, 1, 8, 2, 1, 0)
  for geometry, uses in ((shrinking, "rows"), (same, "jax"), (first, "taps")):
    result = benchmark.time_geometry(geometry, repeats=1)
    assert result["relative_difference"] < 1e-5
    for key in ("jax_ms", "rows_ms", "taps_ms", "rows_speedup", "taps_speedup"):
      assert result[key] > 0
    assert result["pullback_uses"] == uses


def test_main_prints_a_row_per_chosen_geometry(capsys):
  results = benchmark.main(["--only", "cnn7_conv1", "--repeats", "1"])
  assert [r["name"] for r in results] == ["cnn7_conv1"]
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3 and lines[-1].endswith("| kernel taps |")


def test_unknown_geometry_is_an_error(capsys):
  with pytest.raises(SystemExit):
    benchmark.main(["--only", "cnn9"])
  assert "unknown geometry ['cnn9']" in capsys.readouterr().err
