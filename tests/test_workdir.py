"""Tests for cure_jax/workdir.py."""

import json

import ml_collections
import pytest

from cure_jax import workdir as workdir_lib


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
