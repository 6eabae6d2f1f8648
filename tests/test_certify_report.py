"""Tests for cure_jax/certify/report.py."""

import os

import numpy as np
import pytest

from cure_jax.certify import report

# The columns a run certifying l∞, l2, l1 and attacking l∞, l2 must write.
EXPECTED_COLUMNS = (
  "index",
  "label",
  "prediction",
  "correct",
  "certified_linf",
  "certified_l2",
  "certified_l1",
  "stage_linf",
  "stage_l2",
  "stage_l1",
  "pgd_linf",
  "pgd_l2",
  "union_certified",
  "union_pgd",
)
METHODS = ("ibp", "crown", "alpha_crown")
RADII = {"linf": 2 / 255, "l2": 0.25, "l1": 0.5}


def _records():
  """Five points: #1 misclassified; #0 certified for all norms, #3 for two."""
  t, f = True, False
  return report.build_records(
    labels=[3, 1, 0, 2, 2],
    predictions=[3, 0, 0, 2, 2],
    certified={
      "l1": [t, f, f, t, f],
      "linf": [t, f, f, t, t],
      "l2": [t, f, f, f, t],
    },
    stages={
      "linf": ["ibp", "none", "none", "crown", "alpha_crown"],
      "l2": ["crown", "none", "none", "none", "ibp"],
      "l1": ["alpha_crown", "none", "none", "ibp", "none"],
    },
    pgd_robust={"l2": [t, f, t, f, t], "linf": [t, f, f, t, t]},
  )


def _timing():
  entry = lambda points, seconds: dict(
    points=points, rows=8, seconds=seconds, compile_seconds=1.0
  )
  return {
    "certify": {
      n: {
        "ibp": entry(4, 0.5),
        "crown": entry(2, 1.0),
        "alpha_crown": entry(0, 0.0),
      }
      for n in RADII
    },
    "pgd": {"linf": entry(5, 2.5), "l2": entry(5, 5.0)},
  }


def _summary():
  return report.summarize(
    _records(),
    radii=RADII,
    methods=METHODS,
    timing=_timing(),
    settings={"batch_size": 8},
  )


def test_records_have_the_expected_columns_and_unions():
  records = _records()
  assert tuple(records) == EXPECTED_COLUMNS
  np.testing.assert_array_equal(records["correct"], [1, 0, 1, 1, 1])
  # Union = correct AND certified for every norm; likewise for PGD.
  np.testing.assert_array_equal(records["union_certified"], [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(records["union_pgd"], [1, 0, 0, 0, 1])
  np.testing.assert_array_equal(records["index"], np.arange(5))


def test_record_columns_follow_the_norms():
  assert (
    report.record_columns(["l1", "linf", "l2"], ["l2", "linf"])
    == EXPECTED_COLUMNS
  )
  assert report.record_columns(["l2"]) == (
    "index",
    "label",
    "prediction",
    "correct",
    "certified_l2",
    "stage_l2",
    "union_certified",
  )


def test_summary_counts_by_hand():
  summary = _summary()
  assert summary["num_examples"] == 5
  assert summary["clean"] == {"count": 4, "accuracy": 0.8}
  assert summary["certified"]["linf"] == {
    "count": 3,
    "accuracy": 0.6,
    "by_stage": {"ibp": 1, "crown": 1, "alpha_crown": 1},
  }
  assert summary["certified"]["l1"]["by_stage"] == {
    "ibp": 1,
    "crown": 0,
    "alpha_crown": 1,
  }
  assert summary["union_certified"] == {"count": 1, "accuracy": 0.2}
  assert summary["pgd_robust"]["l2"] == {"count": 3, "accuracy": 0.6}
  assert summary["union_pgd"] == {"count": 2, "accuracy": 0.4}
  assert summary["radii"] == RADII
  assert summary["settings"] == {"batch_size": 8}


def test_summary_times_per_point_by_hand():
  timing = _summary()["timing"]
  ibp = timing["certify"]["l2"]["ibp"]
  assert ibp["seconds_per_point"] == 0.5 / 4
  assert ibp["seconds_per_test_point"] == 0.5 / 5
  assert timing["certify"]["l2"]["alpha_crown"]["seconds_per_point"] is None
  total = timing["certify"]["l2"]["total"]
  assert total["seconds"] == 1.5 and total["compile_seconds"] == 3.0
  assert total["seconds_per_test_point"] == 1.5 / 5
  assert timing["pgd"]["l2"]["seconds_per_point"] == 1.0


def test_csv_and_json_round_trip(tmp_path):
  records, summary = _records(), _summary()
  csv_path, json_path = report.write_report(
    str(tmp_path / "out"), records, summary
  )
  with open(csv_path) as f:
    assert f.readline().strip() == ",".join(EXPECTED_COLUMNS)
  read = report.read_csv(csv_path)
  assert tuple(read) == EXPECTED_COLUMNS
  for name, column in records.items():
    np.testing.assert_array_equal(read[name], column)
    assert read[name].dtype.kind == column.dtype.kind, name
  assert report.read_json(json_path) == summary
  assert sorted(os.listdir(tmp_path / "out")) == ["certify.csv", "certify.json"]


def test_failed_write_leaves_the_old_file_and_no_temporary(
  tmp_path, monkeypatch
):
  path = str(tmp_path / "summary.json")
  report.write_json(path, {"old": 1})

  def crash(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError, match="disk full"):
    report.write_json(path, {"new": 2})
  assert report.read_json(path) == {"old": 1}
  assert os.listdir(tmp_path) == ["summary.json"]


def test_json_rejects_nan(tmp_path):
  with pytest.raises(ValueError):
    report.write_json(str(tmp_path / "s.json"), {"accuracy": float("nan")})


def test_table_is_aligned_and_complete():
  table = report.format_table(_summary())
  lines = table.splitlines()
  assert lines[0] == "5 test points, clean accuracy 80.00% (4)"
  header, linf, l2, l1, union = lines[1:]
  assert header.split() == [
    "threat",
    "radius",
    "certified",
    "ibp",
    "crown",
    "alpha_crown",
    "PGD",
    "robust",
    "cert",
    "s/pt",
    "PGD",
    "s/pt",
  ]
  assert linf.split()[:2] == ["l∞", "2/255"]
  assert linf.count("60.00% (3)") == 2  # Certified and PGD-robust.
  assert l1.split()[-3:] == ["-", "0.3", "-"]  # Not attacked for l1.
  assert union.split() == ["union", "20.00%", "(1)", "40.00%", "(2)"]
  # Right-aligned columns end where their header ends.
  for name, cell in [("certified", "60.00% (3)"), ("alpha_crown", "1")]:
    end = header.index(name) + len(name)
    assert linf[:end].endswith(cell), (name, linf)
  end = header.index("certified") + len("certified")
  assert l2[:end].endswith("40.00% (2)") and union[:end].endswith("20.00% (1)")


@pytest.mark.parametrize(
  "eps,text",
  [
    (2 / 255, "2/255"),
    (36 / 255, "36/255"),
    (0.1, "0.1"),
    (1.0, "1"),
    (0.2, "0.2"),
    (0.25, "0.25"),
    (0.0, "0"),
  ],
)
def test_format_radius(eps, text):
  assert report.format_radius(eps) == text


def test_bad_inputs_explain_the_fix(tmp_path):
  with pytest.raises(ValueError, match="radii are given for"):
    report.summarize(_records(), radii={"linf": 0.1}, methods=METHODS)
  with pytest.raises(ValueError, match="same, non-empty norms"):
    report.build_records(
      labels=[0], predictions=[0], certified={"linf": [True]}, stages={}
    )
  with pytest.raises(ValueError, match="Unknown norm"):
    report.build_records(
      labels=[0],
      predictions=[0],
      certified={"l3": [True]},
      stages={"l3": ["ibp"]},
    )
  with pytest.raises(ValueError, match=r"shape \(2,\)"):
    report.build_records(
      labels=[0, 1],
      predictions=[0, 1],
      certified={"l2": [True]},
      stages={"l2": ["ibp"]},
    )
  path = tmp_path / "bad.csv"
  path.write_text("index,accuracy\n0,1\n")
  with pytest.raises(ValueError, match="unknown column 'accuracy'"):
    report.read_csv(str(path))
  path.write_text("index,correct\n0,yes\n")
  with pytest.raises(ValueError, match="must hold 0/1"):
    report.read_csv(str(path))
