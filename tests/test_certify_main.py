"""`python -m cure_jax.certify` on a checkpoint trained here on tiny data."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

# The shared helpers, and the autouse fixture that ignores the caller's
# data environment.
from test_train_loop import (  # pylint: disable=g-bad-import-order
  MNIST_CONFIG,
  NUM_TEST,
  REPO,
  tiny_config,
)

from cure_jax import certify, config_schema, plot
from cure_jax.certify import __main__ as certify_main
from cure_jax.certify import read_csv
from cure_jax.train import loop


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from cure_jax.data import fake_sources  # pylint: disable=g-import-not-at-top

  files = tmp_path_factory.mktemp("files")
  fake_sources.write_fake_mnist(files, num_train=48, num_test=NUM_TEST, seed=5)
  tfds = tmp_path_factory.mktemp("tfds")
  workdir = tmp_path_factory.mktemp("run")
  overrides = {
    "eval.certify_examples": 12,
    "eval.pgd_steps": 5,
    "eval.pgd_restarts": 1,
    "eval.alpha_steps": 3,
    "eval.final_examples": 4,
  }
  config = tiny_config(files, tfds, method="ibp", num_epochs=2, **overrides)
  loop.train_and_evaluate(config, str(workdir))
  return config, workdir, files, tfds, overrides


def test_writes_per_sample_csv_and_summary(trained):
  config, workdir, *_ = trained
  summary = certify_main.certify_checkpoint(config, str(workdir), log=None)
  on_disk = json.loads((workdir / "certify.json").read_text())
  assert on_disk["method"] == "ibp" and on_disk["dataset"] == "mnist"
  assert on_disk["config"] == json.loads(json.dumps(config.to_dict()))
  assert on_disk["provenance"]["versions"]["jax"] == jax.__version__
  assert on_disk["provenance"]["backend"] == jax.default_backend()
  records = read_csv(str(workdir / "certify.csv"))
  assert len(records["label"]) == 12
  assert summary == on_disk
  for norm in ("linf", "l2", "l1"):
    certified = np.asarray(records[f"certified_{norm}"], bool)
    robust = np.asarray(records[f"pgd_{norm}"], bool)
    # A certified point is never broken by the attack.
    assert np.all(robust[certified])
  union = np.asarray(records["union_certified"], bool)
  each = np.all(
    [np.asarray(records[f"certified_{n}"], bool) for n in ("linf", "l2", "l1")],
    axis=0,
  )
  np.testing.assert_array_equal(union, each)


def _certify_command(*args):
  return subprocess.run(
    [sys.executable, "-m", "cure_jax.certify", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


def test_command_line_needs_only_the_workdir(trained, tmp_path):
  _, workdir, files, tfds, overrides = trained
  # The run's recorded config, with overrides on top (the cheap stages: the
  # whole cascade runs on this checkpoint in the tests above).
  result = _certify_command(
    f"--workdir={workdir}",
    "--output_name=cli",
    "--config.eval.certify_examples=5",
    "--config.eval.methods=('ibp','crown_ibp')",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "union" in result.stdout.lower()
  assert len(read_csv(str(workdir / "cli.csv"))["label"]) == 5
  summary = json.loads((workdir / "cli.json").read_text())
  assert summary["config"]["eval"]["certify_examples"] == 5
  assert summary["config"]["eval"]["methods"] == ["ibp", "crown_ibp"]
  assert "certify: 100%" in result.stderr  # the progress bar
  assert (workdir / "certify.log").exists()
  assert "read only" not in result.stderr  # a quiet read-only restore
  # The default search: the radii of the first points, drawn as curves.
  records = read_csv(str(workdir / "cli.csv"))
  assert summary["radius_search"]["examples"] == 5  # every point
  assert summary["radius_search"]["methods"] == ["ibp", "crown_ibp"]
  for norm in ("linf", "l2", "l1"):
    assert np.all(np.isfinite(records[f"radius_certified_{norm}"]))
    assert np.all(np.isfinite(records[f"radius_pgd_{norm}"]))
  figure = plot.draw_figure([plot.read_run(str(workdir), "cli")], points=16)
  for axes in figure.axes:
    styles = {
      line.get_linestyle()
      for line in axes.get_lines()
      if len(line.get_xdata()) == 16  # a curve, not a marker or a rule
    }
    assert styles == {"-", "--"}  # certified solid, PGD dashed
  # --noradius_search: the evaluation radii only, no curves.
  plain = _certify_command(
    f"--workdir={workdir}",
    "--output_name=plain",
    "--noradius_search",
    "--config.eval.certify_examples=3",
    "--config.eval.methods=('ibp',)",
    "--config.eval.norms=('l2',)",
  )
  assert plain.returncode == 0, plain.stderr[-3000:]
  plain_run = plot.read_run(str(workdir), "plain")
  assert "radius_certified_linf" not in plain_run.records
  assert (
    plot.norm_curves(plain_run.records, plain_run.summary, "l2").eps is None
  )
  # An explicit --config still works (here: on a folder with no checkpoint).
  args = [
    f"--config={MNIST_CONFIG}:cpu=True,method=ibp",
    f"--workdir={tmp_path / 'nothing'}",
    f"--config.dataset.data_dir={files}",
    f"--config.dataset.tfds_data_dir={tfds}",
    "--config.dataset.download=False",
    "--config.model.name=mlp",
  ]
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  missing = _certify_command(*args)
  assert missing.returncode == 1
  assert "no checkpoint" in missing.stderr and "Traceback" not in missing.stderr
  assert not (tmp_path / "nothing").exists()  # nothing created


def test_attack_starts_come_from_the_configs_seed(trained, monkeypatch):
  config, workdir, *_ = trained
  keys = []
  evaluate = certify.evaluate

  def recording_evaluate(*args, **kwargs):
    keys.append(np.asarray(kwargs["key"]))
    return evaluate(*args, **kwargs)

  monkeypatch.setattr(certify, "evaluate", recording_evaluate)
  for run, seed in enumerate((1, 1, 2)):
    small = config.copy_and_resolve_references()
    small.unlock()
    config_schema.apply_overrides(
      small,
      {
        "seed": seed,
        "eval.certify_examples": 4,
        "eval.methods": ("ibp",),
        "eval.norms": ("linf",),
        "eval.pgd_steps": 2,
      },
    )
    certify_main.certify_checkpoint(
      small, str(workdir), output_name=f"seeded_{run}", log=None
    )
  np.testing.assert_array_equal(keys[0], jax.random.PRNGKey(1))
  np.testing.assert_array_equal(keys[0], keys[1])
  assert not np.array_equal(keys[1], keys[2])  # other random starts
  same = [read_csv(str(workdir / f"seeded_{i}.csv")) for i in (0, 1)]
  np.testing.assert_array_equal(same[0]["pgd_linf"], same[1]["pgd_linf"])
