"""Tests for cure_jax/workdir.py."""

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from cure_jax import cli, config_schema, recorded_config
from cure_jax import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config():
  return ml_collections.ConfigDict(
    dict(
      seed=3,
      method="sabr",
      lr_milestones=(4, 5),
      eval=dict(norms=("linf", "l2"), eps_l2=0.5),
    )
  )


def test_config_round_trips_with_tuples_and_records_provenance(tmp_path):
  workdir_lib.write_run_record(str(tmp_path), _config())
  config = workdir_lib.read_config(str(tmp_path))
  assert config.to_dict() == _config().to_dict()
  assert isinstance(config.eval.norms, tuple)
  with pytest.raises(AttributeError):
    config.not_a_key = 1  # locked, as a loaded config file is
  record = json.loads((tmp_path / workdir_lib.RUN_FILE).read_text())
  assert record["seed"] == 3
  assert record["versions"]["jax"]
  assert record["backend"] == "cpu" and record["devices"]


def test_missing_config_says_what_to_do(tmp_path):
  with pytest.raises(workdir_lib.WorkdirError, match="--config"):
    workdir_lib.read_config(str(tmp_path))
  assert workdir_lib.read_run_record(str(tmp_path)) == {}


def test_describe_is_json_ready_with_the_config_and_provenance():
  described = workdir_lib.describe(_config())
  assert described == json.loads(json.dumps(described))
  assert described["config"]["eval"]["norms"] == ["linf", "l2"]
  assert set(described["provenance"]) >= {"versions", "git_revision", "devices"}


def test_load_without_a_recorded_config_says_what_to_do(tmp_path):
  import cure_jax  # pylint: disable=g-import-not-at-top

  with pytest.raises(workdir_lib.WorkdirError, match="not a run folder"):
    cure_jax.load(str(tmp_path))


def test_a_workdir_alone_names_its_recorded_config(tmp_path):
  workdir_lib.write_run_record(str(tmp_path), _config())
  inserted = f"--config={os.path.abspath(recorded_config.__file__)}:{tmp_path}"
  for argv in (
    ["prog", f"--workdir={tmp_path}", "--config.seed=5"],
    ["prog", "--workdir", str(tmp_path), "--config.seed=5"],
  ):
    assert cli.with_recorded_config(argv) == [argv[0], inserted, *argv[1:]]
  explicit = ["prog", "--config=configs/mnist.py", f"--workdir={tmp_path}"]
  assert cli.with_recorded_config(explicit) == explicit
  assert cli.with_recorded_config(["prog", "--x=1"]) == ["prog", "--x=1"]
  with pytest.raises(workdir_lib.WorkdirError, match="--config"):
    cli.with_recorded_config(["prog", f"--workdir={tmp_path / 'empty'}"])
  config = recorded_config.get_config(str(tmp_path))
  assert config.seed == 3 and config.auto_cpu is False


def test_keys_newer_than_a_recorded_config_get_their_defaults(tmp_path):
  workdir_lib.write_run_record(str(tmp_path), _config())
  config = recorded_config.get_config(str(tmp_path))
  defaults = config_schema.base_config()
  # Recorded values stay, in the recorded section too.
  assert config.seed == 3 and config.eval.norms == ("linf", "l2")
  assert config.eval.eps_l2 == 0.5 and config.lr_milestones == (4, 5)
  # Keys the record lacks have their defaults, and can be overridden.
  assert config.eval.attack_first is defaults.eval.attack_first
  assert config.eval.pgd_steps == defaults.eval.pgd_steps
  assert config.cure.to_dict() == defaults.cure.to_dict()
  with pytest.raises(AttributeError):
    config.not_a_key = 1  # still locked


def test_recorded_config_differences_are_listed(tmp_path):
  workdir_lib.write_run_record(str(tmp_path), _config())
  other = _config()
  other.seed, other.eval.norms = 4, ("linf",)
  assert cli.differing_keys(other, str(tmp_path)) == ["eval.norms", "seed"]
  assert cli.differing_keys(_config(), str(tmp_path)) == []
  assert cli.differing_keys(other, str(tmp_path / "no_run")) == []


_FLAGS_SCRIPT = """
import sys
from absl import app, flags
from ml_collections import config_flags
from cure_jax import cli
config_flags.DEFINE_config_file("config", None, "", lock_config=True)
flags.DEFINE_string("workdir", None, "")

def main(argv):
  config = flags.FLAGS.config
  recorded = cli.config_is_recorded(flags.FLAGS["config"])
  print("CONFIG", config.seed, config.eval.norms, config.method, recorded)

sys.argv = ["prog", *sys.argv[1:]]
app.run(main, flags_parser=cli.parse_flags)
"""


def _parse(*args):
  return subprocess.run(
    [sys.executable, "-c", _FLAGS_SCRIPT, *args],
    capture_output=True,
    text=True,
    timeout=60,
    env={**os.environ, "PYTHONPATH": str(REPO)},
  )


def test_overrides_apply_to_the_recorded_config_by_its_types(tmp_path):
  workdir_lib.write_run_record(str(tmp_path), _config())
  result = _parse(
    f"--workdir={tmp_path}", "--config.seed=5", "--config.eval.norms=('l2',)"
  )
  assert result.returncode == 0, result.stderr
  assert "CONFIG 5 ('l2',) sabr True" in result.stdout
  typo = _parse(f"--workdir={tmp_path}", "--config.sede=5")
  assert typo.returncode != 0 and "Traceback" not in typo.stderr
  assert "unknown config key 'sede'" in typo.stderr
  assert "Did you mean 'seed'" in typo.stderr
  missing = _parse(f"--workdir={tmp_path / 'empty'}")
  assert missing.returncode != 0 and "Pass the run's --config" in missing.stderr
