"""Tests for cure_jax/plot: curves from records, the figure, TensorBoard."""

import glob
import json
import os
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from cure_jax.certify import report
from cure_jax.plot import (
  accuracy_at,
  code_version,
  draw_figure,
  hyperparameters,
  log_curves,
  machine,
  metrics,
  norm_curves,
  output_paths,
  read_run,
  save_figure,
)
from cure_jax.plot.__main__ import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RADII = {"linf": 0.1, "l2": 0.5}
EPS_MAX = {"linf": 0.2, "l2": 1.0}


def _write_run(directory, seed=0, method="cure_max", with_radii=True):
  """A certify.csv/json as evaluate writes them, for 40 synthetic points."""
  rng = np.random.default_rng(seed)
  num = 40
  labels = rng.integers(0, 3, num)
  correct = rng.random(num) < 0.8
  predictions = np.where(correct, labels, (labels + 1) % 3)
  certified_radii = {
    n: np.where(correct, rng.random(num) * 0.99 * EPS_MAX[n], 0.0)
    for n in RADII
  }
  pgd_radii = {
    n: np.where(correct, np.minimum(1.5 * r, 0.99 * EPS_MAX[n]), 0.0)
    for n, r in certified_radii.items()
  }
  records = report.build_records(
    labels=labels,
    predictions=predictions,
    certified={n: r >= RADII[n] for n, r in certified_radii.items()},
    stages={n: np.full(num, "ibp") for n in RADII},
    pgd_robust={n: r >= RADII[n] for n, r in pgd_radii.items()},
  )
  if with_radii:
    records = report.extend_records(
      records,
      {f"radius_certified_{n}": r for n, r in certified_radii.items()}
      | {f"radius_pgd_{n}": r for n, r in pgd_radii.items()},
    )
  summary = report.summarize(records, radii=RADII, methods=["ibp"])
  summary["method"] = method
  summary["radius_search"] = {"eps_max": EPS_MAX, "relative_tolerance": 0.01}
  report.write_report(str(directory), records, summary)
  return records


@pytest.fixture
def run_dir(tmp_path):
  path = tmp_path / "run_a"
  _write_run(path)
  return str(path)


def test_accuracy_at_counts_correct_points_with_radius_at_least_eps():
  radii = np.array([0.0, 0.1, 0.3, 0.3, 0.5])
  correct = np.array([True, True, True, False, True])
  np.testing.assert_allclose(
    accuracy_at(radii, correct, np.array([0.0, 0.1, 0.2, 0.3, 0.6])),
    [0.8, 0.6, 0.4, 0.4, 0.0],
  )


def test_curves_agree_with_the_flags_at_the_evaluation_radius(run_dir):
  run = read_run(run_dir)
  for norm, eps in RADII.items():
    curves = norm_curves(run.records, run.summary, norm, points=11)
    assert curves.eps[-1] == pytest.approx(0.99 * EPS_MAX[norm])
    assert curves.eval_radius == eps
    correct = run.records["correct"]
    for prefix, at_eps in (
      ("radius_certified_", curves.eval_certified),
      ("radius_pgd_", curves.eval_pgd),
    ):
      radii = run.records[prefix + norm]
      assert accuracy_at(radii, correct, [eps])[0] == pytest.approx(at_eps)
    assert curves.certified[0] == pytest.approx(np.mean(run.records["correct"]))
    assert np.all(np.diff(curves.certified) <= 0)
    assert np.all(curves.pgd >= curves.certified)


def test_without_radius_columns_only_the_evaluation_radius_is_known(tmp_path):
  _write_run(tmp_path, with_radii=False)
  run = read_run(str(tmp_path))
  curves = norm_curves(run.records, run.summary, "linf")
  assert curves.eps is None and curves.certified is None
  assert curves.eval_certified == pytest.approx(
    np.mean(run.records["certified_linf"])
  )


def test_method_name_from_summary_results_or_folder(tmp_path):
  _write_run(tmp_path / "a", method="sabr")
  assert read_run(str(tmp_path / "a")).name == "sabr"
  _write_run(tmp_path / "b")
  os.remove(tmp_path / "b" / "certify.json")
  with open(tmp_path / "b" / "results.json", "w") as f:
    json.dump({"method": "cure_joint", "dataset": "mnist", "steps": 7}, f)
  run = read_run(str(tmp_path / "b"))
  assert run.name == "cure_joint"
  assert hyperparameters(run) == {
    "method": "cure_joint",
    "dataset": "mnist",
    "steps": 7,
  }
  _write_run(tmp_path / "c")
  os.remove(tmp_path / "c" / "certify.json")
  assert read_run(str(tmp_path / "c")).name == "c"
  with pytest.raises(FileNotFoundError, match="certify the run first"):
    read_run(str(tmp_path / "missing"))


def test_figure_renders_png_and_pdf(run_dir, tmp_path):
  other = tmp_path / "run_b"
  _write_run(other, seed=1, method="sabr", with_radii=False)
  figure = draw_figure([read_run(run_dir), read_run(str(other))])
  assert len(figure.axes) == 2
  legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
  assert legend[:2] == ["cure_max", "sabr"]
  assert code_version() in figure.texts[0].get_text() or any(
    code_version() in t.get_text() for t in figure.texts
  )
  paths = save_figure(figure, str(tmp_path / "figure"))
  assert paths == [str(tmp_path / "figure.png"), str(tmp_path / "figure.pdf")]
  with open(paths[0], "rb") as f:
    assert f.read(8) == PNG_MAGIC
  with open(paths[1], "rb") as f:
    assert f.read(5) == b"%PDF-"
  assert all(os.path.getsize(p) > 10_000 for p in paths)


def test_output_paths_follow_the_suffix():
  assert output_paths("a/fig.png") == ["a/fig.png"]
  assert output_paths("fig.PDF") == ["fig.PDF"]
  assert output_paths("fig") == ["fig.png", "fig.pdf"]
  assert output_paths("fig.svg") == ["fig.svg.png", "fig.svg.pdf"]


def test_the_command_line_writes_the_figure(run_dir, tmp_path, capsys):
  out = str(tmp_path / "curves.png")
  assert main([run_dir, run_dir, "--out", out, "--points", "32"]) == 0
  assert os.path.getsize(out) > 10_000
  assert "wrote" in capsys.readouterr().out
  assert main([run_dir, "--tensorboard"]) == 0
  assert os.path.exists(os.path.join(run_dir, "accuracy_curves.pdf"))
  assert _events(os.path.join(run_dir, "tensorboard", "curves"))
  assert main([str(tmp_path / "nothing")]) == 1
  assert "certify the run first" in capsys.readouterr().err


def _events(logdir):
  """Every event in the TFRecord files under ``logdir``."""
  events = []
  for path in glob.glob(os.path.join(logdir, "**", "events.*"), recursive=True):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset : offset + 8])
      payload = data[offset + 12 : offset + 12 + length]
      events.append(event_pb2.Event.FromString(payload))
      offset += 12 + length + 4
  return events


def test_tensorboard_gets_curves_figure_and_hparams(run_dir, tmp_path):
  run = read_run(run_dir)
  logdir = log_curves(run, str(tmp_path / "tb"), points=5)
  values = {}
  tags = set()
  for event in _events(logdir):
    for value in event.summary.value:
      tags.add(value.tag)
      if value.HasField("simple_value"):
        values[(value.tag, event.step)] = value.simple_value
  curves = norm_curves(run.records, run.summary, "l2", points=5)
  for step in range(5):
    assert values[("radius/l2", step)] == pytest.approx(curves.eps[step])
    assert values[("certified_accuracy/l2", step)] == pytest.approx(
      curves.certified[step]
    )
  assert "accuracy_against_radius" in tags
  assert "_hparams_/experiment" in tags
  assert values[("hparams/clean_accuracy", 0)] == pytest.approx(
    metrics(run)["clean_accuracy"]
  )
  assert hyperparameters(run)["eps/linf"] == 0.1


def test_machine_and_version_are_labelled():
  assert code_version().startswith("cure_jax ")
  assert "(" in machine()


def test_curves_of_a_search_of_the_first_points(tmp_path):
  """Radii of the first 30 of 40 points (NaN after): the curves are over
  those 30, the markers at ε over all 40, and the legend says so."""
  records = _write_run(tmp_path)
  partial = dict(records)
  for name in records:
    if name.startswith(("radius_certified_", "radius_pgd_")):
      partial[name] = np.where(np.arange(40) < 30, records[name], np.nan)
  report.write_csv(str(tmp_path / "certify.csv"), partial)
  run = read_run(str(tmp_path))
  correct = run.records["correct"]
  for norm in RADII:
    curves = norm_curves(run.records, run.summary, norm, points=11)
    assert curves.curve_points == 30 and curves.points == 40
    radii = records[f"radius_certified_{norm}"][:30]
    np.testing.assert_allclose(
      curves.certified, accuracy_at(radii, correct[:30], curves.eps)
    )
    assert curves.eval_certified == pytest.approx(
      np.mean(run.records[f"certified_{norm}"])
    )
  assert metrics(run)["mean_radius_certified_linf"] == pytest.approx(
    np.mean(records["radius_certified_linf"][:30][correct[:30]])
  )
  figure = draw_figure([run], points=11)
  legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
  assert legend[0] == "cure_max (curves: first 30 of 40 points)"
  for axes in figure.axes:
    curves = [line for line in axes.get_lines() if len(line.get_xdata()) == 11]
    assert sorted(line.get_linestyle() for line in curves) == ["-", "--"]
