"""`python -m cure_jax.certify.table`: figures recomputed from per-sample CSVs."""

import json

import numpy as np
import pytest

from cure_jax.certify import build_records, table, write_csv


def _write_run(directory, method, correct, linf, l2, train_seconds=120.0):
  directory.mkdir()
  n = len(correct)
  labels = np.zeros(n, np.int32)
  predictions = np.where(correct, 0, 1)
  certified = {"linf": np.asarray(linf, bool), "l2": np.asarray(l2, bool)}
  stages = {k: np.where(v, "ibp", "none") for k, v in certified.items()}
  records = build_records(
    labels=labels,
    predictions=predictions,
    certified=certified,
    stages=stages,
    pgd_robust={k: v | np.asarray(correct, bool) for k, v in certified.items()},
  )
  write_csv(str(directory / "certify.csv"), records)
  timing = {
    "certify": {
      norm: {"ibp": {"seconds": 0.5 * n}, "total": {"seconds": 0.5 * n}}
      for norm in ("linf", "l2")
    },
    "pgd": {norm: {"seconds": 0.25 * n} for norm in ("linf", "l2")},
  }
  (directory / "certify.json").write_text(
    json.dumps({"method": method, "num_examples": n, "timing": timing})
  )
  (directory / "results.json").write_text(
    json.dumps({"train_seconds_this_run": train_seconds})
  )


def test_rows_by_hand_and_first_n(tmp_path):
  _write_run(
    tmp_path / "a",
    "sabr",
    correct=[1, 1, 1, 0],
    linf=[1, 1, 0, 0],
    l2=[0, 1, 1, 0],
  )
  row = table.run_row(str(tmp_path / "a"))
  assert row["method"] == "sabr" and row["points"] == 4
  assert row["clean"] == 0.75
  assert row["certified_linf"] == 0.5 and row["certified_l2"] == 0.5
  assert row["union_certified"] == 0.25  # only point 1 holds for both
  first = table.run_row(str(tmp_path / "a"), first=1)
  assert first["points"] == 1 and first["union_certified"] == 0.0
  with pytest.raises(ValueError, match="fewer than --first=9"):
    table.run_row(str(tmp_path / "a"), first=9)


def test_linf_l2_union_beside_the_all_norms_union(tmp_path):
  directory = tmp_path / "c"
  directory.mkdir()
  n = 4
  certified = {
    "linf": np.array([1, 1, 0, 1], bool),
    "l2": np.array([1, 1, 1, 0], bool),
    "l1": np.array([0, 1, 0, 0], bool),
  }
  records = build_records(
    labels=np.zeros(n, np.int32),
    predictions=np.zeros(n, np.int32),
    certified=certified,
    stages={k: np.where(v, "ibp", "none") for k, v in certified.items()},
  )
  write_csv(str(directory / "certify.csv"), records)
  row = table.run_row(str(directory))
  assert row["union_certified"] == 0.25 and row["union_linf_l2"] == 0.5
  assert "cert. l∞ ∪ l2" in table.markdown([row])


def test_markdown_table_lists_every_run(tmp_path, capsys):
  _write_run(tmp_path / "a", "sabr", [1, 1], [1, 0], [0, 0])
  _write_run(tmp_path / "b", "cure_max", [1, 1], [1, 1], [1, 0], 600.0)
  table.main([str(tmp_path / "a"), str(tmp_path / "b")])
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("| method | points | clean | cert. l∞ | cert. l2")
  assert out[2].startswith("| sabr | 2 | 100.0% | 50.0% | 0.0% | 0.0%")
  assert out[3].startswith("| cure_max | 2 | 100.0% | 100.0% | 50.0% | 50.0%")
  # 0.5 s per point per norm for the cascade, 0.25 for PGD, two norms.
  assert out[3].endswith("| 10.0 | 1.500 |")


def _write_beyond_lp(directory, method, correct, patch_2, rotation):
  correct = np.asarray(correct, bool)
  records = {
    "index": np.arange(len(correct)),
    "label": np.zeros(len(correct), np.int64),
    "prediction": np.where(correct, 0, 1),
    "correct": correct,
  }
  for name, cert in (("patch_2", patch_2), ("rotation", rotation)):
    cert = np.asarray(cert, bool)
    records[f"certified_{name}"] = cert
    records[f"stage_{name}"] = np.where(cert, "ibp", "none")
    records[f"attack_{name}"] = cert | correct
  write_csv(str(directory / "beyond_lp.csv"), records)
  (directory / "beyond_lp.json").write_text(json.dumps({"method": method}))


def test_beyond_lp_columns_by_hand(tmp_path, capsys):
  _write_run(
    tmp_path / "a",
    "sabr",
    correct=[1, 1, 1, 0],
    linf=[1, 1, 0, 0],
    l2=[0, 1, 1, 0],
  )
  _write_beyond_lp(
    tmp_path / "a",
    "sabr",
    correct=[1, 1, 1, 0],
    patch_2=[1, 0, 0, 0],
    rotation=[1, 1, 0, 0],
  )
  _write_run(tmp_path / "b", "l2", correct=[1, 0], linf=[0, 0], l2=[1, 0])
  row = table.beyond_lp_row(str(tmp_path / "a"))
  assert row["certified_patch_2"] == 0.25 and row["certified_rotation"] == 0.5
  assert row["attack_patch_2"] == 0.75
  assert (
    table.beyond_lp_row(str(tmp_path / "a"), first=2)["certified_rotation"]
    == 1.0
  )
  assert table.beyond_lp_row(str(tmp_path / "b")) is None
  table.main([str(tmp_path / "a"), str(tmp_path / "b")])
  out = capsys.readouterr().out
  assert "| patch 2 | rotation |" in out
  assert "| sabr | 4 | 75.0% | 25.0% (75.0%) | 50.0% (75.0%) |" in out
