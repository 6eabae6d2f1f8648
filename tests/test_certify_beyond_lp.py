"""`python -m cure_jax.certify.beyond_lp` on a checkpoint trained here.

Patches and geometric families are certified and attacked on a few test
points of tiny MNIST files; the reports have a row per point and a summary
per threat, certified points are never broken by the attacks, and bad
settings fail before anything is loaded, with the key to fix.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_train_loop import (  # pylint: disable=g-bad-import-order
  MNIST_CONFIG,
  REPO,
  tiny_config,
)

from cure_jax import config_schema
from cure_jax.certify import beyond_lp, read_csv
from cure_jax.certify.beyond_lp import threat_eval
from cure_jax.train import loop

EXAMPLES = 6
OVERRIDES = {
  "eval.final_examples": 4,
  "eval.beyond_lp.examples": EXAMPLES,
  "eval.beyond_lp.patch_sizes": (2, 5),
  "eval.beyond_lp.patch_attack_steps": 2,
  "eval.beyond_lp.families": ("rotation", "brightness_contrast"),
  "eval.beyond_lp.ranges.rotation": 2.0,
  "eval.beyond_lp.subintervals.rotation": 2,
  "eval.beyond_lp.subintervals.brightness_contrast": 2,
  "eval.beyond_lp.grid_points.rotation": 5,
  "eval.beyond_lp.grid_points.brightness_contrast": 3,
}
THREATS = ("patch_2", "patch_5", "rotation", "brightness_contrast")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from cure_jax.data import fake_sources  # pylint: disable=g-import-not-at-top

  files = tmp_path_factory.mktemp("files")
  fake_sources.write_fake_mnist(files, num_train=48, num_test=10, seed=6)
  tfds = tmp_path_factory.mktemp("tfds")
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config(files, tfds, method="ibp", num_epochs=2, **OVERRIDES)
  loop.train_and_evaluate(config, str(workdir))
  return config, workdir, files, tfds


def test_writes_per_point_csv_and_per_threat_summary(trained, monkeypatch):
  config, workdir, *_ = trained
  keys = []
  evaluate_threats = threat_eval.evaluate_threats

  def recording(*args, **kwargs):
    keys.append(kwargs["key"])
    return evaluate_threats(*args, **kwargs)

  monkeypatch.setattr(threat_eval, "evaluate_threats", recording)
  summary = beyond_lp.certify_checkpoint_beyond_lp(
    config, str(workdir), log=None
  )
  # The patch attacks' random starts come from the config's seed.
  np.testing.assert_array_equal(
    jax.random.key_data(keys[0]),
    jax.random.key_data(jax.random.key(config.seed)),
  )
  on_disk = json.loads((workdir / "beyond_lp.json").read_text())
  assert on_disk == summary
  assert on_disk["config"] == json.loads(json.dumps(config.to_dict()))
  assert on_disk["provenance"]["versions"]["jax"] == jax.__version__
  assert list(summary["threats"]) == list(THREATS)
  assert summary["threats"]["patch_2"]["regions"] == 27 * 27
  assert summary["threats"]["patch_5"]["regions"] == 24 * 24
  assert summary["threats"]["rotation"]["regions"] == 2
  assert summary["threats"]["brightness_contrast"]["regions"] == 4
  records = read_csv(str(workdir / "beyond_lp.csv"))
  assert len(records["index"]) == EXAMPLES
  correct = np.asarray(records["correct"], bool)
  for name in THREATS:
    certified = np.asarray(records[f"certified_{name}"], bool)
    robust = np.asarray(records[f"attack_{name}"], bool)
    assert np.all(robust[certified]) and np.all(correct[robust])
    assert set(records[f"stage_{name}"]) <= {"ibp", "crown_ibp", "none"}
    entry = summary["threats"][name]
    assert entry["certified"]["count"] == certified.sum()
    assert entry["empirical"]["count"] == robust.sum()
    assert entry["seconds_per_point"] >= 0
  # A bigger patch can only be harder: its windows contain smaller ones.
  assert np.all(
    np.asarray(records["certified_patch_2"], bool)[
      np.asarray(records["certified_patch_5"], bool)
    ]
  )
  union = np.all(
    [np.asarray(records[f"certified_{n}"], bool) for n in THREATS], axis=0
  )
  np.testing.assert_array_equal(records["union_certified"], union)
  assert "patch_5" in beyond_lp.format_threat_table(summary)


@pytest.mark.parametrize(
  "change, message",
  [
    ({"eval.beyond_lp.patch_sizes": (30,)}, "does not fit"),
    ({"eval.beyond_lp.families": ("warping",)}, "valid families"),
    ({"eval.beyond_lp.ranges.scaling": 1.5}, "scaling"),
    ({"eval.beyond_lp.subintervals.rotation": 0}, "subintervals"),
  ],
)
def test_bad_settings_fail_before_loading_anything(
  trained, tmp_path, change, message
):
  config, *_ = trained
  config = config.copy_and_resolve_references()
  config.unlock()
  config_schema.apply_overrides(config, change)
  with pytest.raises(ValueError, match=message):
    # An empty workdir: the settings are checked before the checkpoint.
    beyond_lp.certify_checkpoint_beyond_lp(config, str(tmp_path), log=None)


def test_command_line_needs_only_the_workdir_and_reports_errors(
  trained, tmp_path
):
  _, workdir, files, tfds = trained
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", "cure_jax.certify.beyond_lp"]
  result = subprocess.run(
    # The run's recorded config (with OVERRIDES) needs no --config.
    [*command, f"--workdir={workdir}", "--output_name=cli"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / "cli.csv").exists() and (workdir / "cli.json").exists()
  assert "patch_2" in result.stdout and "rotation" in result.stdout
  assert "beyond l_p: 100%" in result.stderr  # the progress bar
  args = [
    f"--config={MNIST_CONFIG}:cpu=True,method=ibp",
    f"--workdir={tmp_path / 'nothing'}",
    f"--config.dataset.data_dir={files}",
    f"--config.dataset.tfds_data_dir={tfds}",
    "--config.dataset.download=False",
    "--config.model.name=mlp",
  ]
  args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  args = [a.replace(" ", "") for a in args]  # tuples as one argument
  missing = subprocess.run(
    [*command, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert missing.returncode == 1
  assert "no checkpoint" in missing.stderr
  assert "Traceback" not in missing.stderr
