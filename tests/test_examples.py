"""Tests for examples/: each runs end to end on tiny synthetic data."""

import os

import numpy as np

from cure_jax import plot
from cure_jax.certify import report
from examples import (
  certify_custom_model,
  plot_tiny_runs,
  synthetic_images,
  train_custom_model_ibp,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_synthetic_images_are_in_the_pixel_domain():
  import jax

  images, labels = synthetic_images.make_images(jax.random.PRNGKey(0), 10)
  assert images.shape == (10, 8, 8, 1) and labels.shape == (10,)
  assert images.min() >= 0 and images.max() <= 1
  assert set(labels) <= {0, 1, 2}


def test_certify_custom_model(tmp_path):
  summary = certify_custom_model.main(
    ["--size", "tiny", "--out", str(tmp_path)]
  )
  assert summary["num_examples"] == certify_custom_model.SIZES["tiny"]["test"]
  assert summary["bound_widths"]["crown"] <= summary["bound_widths"]["ibp"]
  records = report.read_csv(os.path.join(tmp_path, "certify.csv"))
  for norm in certify_custom_model.SIZES["tiny"]["norms"]:
    radius = records[f"radius_certified_{norm}"]
    np.testing.assert_array_equal(
      radius >= np.float32(certify_custom_model.RADII[norm]),
      records[f"certified_{norm}"],
    )
    assert np.all(records[f"radius_pgd_{norm}"] >= radius)


def test_train_custom_model_ibp():
  result = train_custom_model_ibp.main(["--size", "tiny"])
  steps = train_custom_model_ibp.SIZES["tiny"]["steps"]
  assert len(result["losses"]) == steps
  assert np.all(np.isfinite(result["losses"]))
  assert 0 <= result["certified_ibp"] <= 1
  assert 0 <= result["certified_standard"] <= 1


def test_plot_tiny_runs(tmp_path):
  result = plot_tiny_runs.main(["--size", "tiny", "--out", str(tmp_path)])
  assert [os.path.basename(r) for r in result["runs"]] == ["standard", "ibp"]
  for run in result["runs"]:
    assert os.path.exists(os.path.join(run, "certify.csv"))
  png, pdf = result["figures"]
  with open(png, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  assert os.path.getsize(png) > 10_000 and os.path.getsize(pdf) > 5_000
  # The figure carries curves: per panel, each run's certified accuracy
  # (solid) and PGD accuracy (dashed) on every radius of the grid.
  figure = plot.draw_figure([plot.read_run(r) for r in result["runs"]], 16)
  assert figure.axes  # one panel per norm of the size
  for axes in figure.axes:
    curves = [line for line in axes.get_lines() if len(line.get_xdata()) == 16]
    styles = sorted(line.get_linestyle() for line in curves)
    assert styles == ["-", "-", "--", "--"]
    for line in curves:
      accuracy = np.asarray(line.get_ydata())
      assert np.all(np.diff(accuracy) <= 0)  # falls with ε
