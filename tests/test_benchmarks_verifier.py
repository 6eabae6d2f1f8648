"""The verifier benchmark: its workers, its table, and auto_LiRPA absent.

auto_LiRPA is never installed for the tests: its columns must say so.
"""

import json

import numpy as np
import pytest

from cure_jax.benchmarks import verifier


def test_a_run_without_auto_lirpa_reports_ours_and_says_why_not_theirs():
  rows = verifier.run(
    models=("small_cnn",),
    batches=(1, 2),
    methods=("crown_ibp",),
    lirpa_python="/nonexistent/python",
    timeout=600,
  )
  assert [(row["model"], row["batch"], row["method"]) for row in rows] == [
    ("small_cnn", 1, "crown_ibp"),
    ("small_cnn", 2, "crown_ibp"),
  ]
  for row in rows:
    ours, theirs = row["cure_jax"], row["auto_LiRPA"]
    assert "error" not in ours, ours
    assert ours["first_s"] > 0 and ours["steady_s"] > 0
    assert 1 <= ours["calls"] <= verifier.MAX_CALLS
    assert np.isfinite(ours["mean_margin"])
    assert theirs == {"error": "skipped: /nonexistent/python not found"}
  table = verifier.table(rows)
  assert "| small_cnn | 1 | crown_ibp |" in table
  assert "| small_cnn | 2 | crown_ibp |" in table
  assert "skipped: /nonexistent/python not found" in table


def test_no_peer_runs_ours_alone_without_looking_for_auto_lirpa(
  monkeypatch, tmp_path
):
  commands = []

  def fake_run(command, timeout, env=None):
    commands.append(command)
    return dict(
      first_s=2.0, steady_s=1.0, calls=1, peak_mb=10.0, mean_margin=-0.1
    )

  monkeypatch.setattr(verifier, "_run", fake_run)
  monkeypatch.setattr(
    verifier, "lirpa_available", lambda python: pytest.fail("looked")
  )
  out = tmp_path / "rows.json"
  verifier.main(
    "--no-peer --models small_cnn --methods crown --batch 4".split()
    + [f"--out={out}"]
  )
  # one export and one cure_jax worker, every one of them our own module
  assert len(commands) == 2
  assert all(
    command[1:3] == ["-m", "cure_jax.benchmarks.verifier"]
    for command in commands
  )
  (row,) = json.loads(out.read_text())
  assert row["auto_LiRPA"] == {"error": "skipped: not asked for (--no-peer)"}
  assert row["cure_jax"]["steady_s"] == 1.0


def test_host_memory_settings_reach_each_library_s_worker(monkeypatch):
  calls = []

  def fake_run(command, timeout, env=None):
    calls.append((command, env))
    return dict(
      first_s=2.0, steady_s=1.0, calls=1, peak_mb=10.0, mean_margin=-0.1
    )

  monkeypatch.setattr(verifier, "_run", fake_run)
  monkeypatch.setattr(verifier, "lirpa_available", lambda python: None)
  base = "--models small_cnn --methods crown --batch 4".split()
  for flags, ours_kept, peer_env in (
    ([], True, None),
    (
      ["--default-host-memory", "--peer-kept-memory"],
      False,
      verifier.KEPT_MEMORY_ENV,
    ),
  ):
    calls.clear()
    verifier.main(base + flags)
    _, (ours, ours_env), (peer, theirs_env) = calls
    # cure_jax's worker says whether it keeps memory, in its own process;
    # auto_LiRPA's gets glibc's environment, when asked.
    assert json.loads(ours[-1])["keep_memory"] is ours_kept
    assert ours_env is None
    assert peer[0] == "/tmp/lirpa/bin/python" and theirs_env == peer_env


def test_the_table_gives_milliseconds_per_point_and_the_ratio():
  rows = [
    dict(
      model="cnn7",
      batch=4,
      method="crown",
      cure_jax=dict(
        first_s=4.0, steady_s=1.0, calls=5, peak_mb=900.0, mean_margin=-0.5
      ),
      auto_LiRPA=dict(
        first_s=6.0, steady_s=3.0, calls=5, peak_mb=800.0, mean_margin=-0.5
      ),
    ),
    dict(
      model="cnn7",
      batch=4,
      method="alpha_crown",
      cure_jax=dict(error="timed out after 10 s"),
      auto_LiRPA=dict(
        first_s=6.0, steady_s=3.0, calls=1, peak_mb=800.0, mean_margin=-0.4
      ),
    ),
    dict(  # a first call too slow to repeat stands alone
      model="cnn7",
      batch=8,
      method="alpha_crown",
      cure_jax=dict(first_s=1000.0, peak_mb=9000.0, mean_margin=-0.3),
      auto_LiRPA=dict(error="exit -9: "),
    ),
  ]
  lines = verifier.table(rows).splitlines()
  assert lines[2] == (
    "| cnn7 | 4 | crown | 250 (1000) | 750 (1500) | 3.00× | 900 | 800 | "
    "-0.500 / -0.500 |"
  )
  assert "timed out after 10 s" in lines[3] and "| — |" in lines[3]
  assert lines[4].startswith("| cnn7 | 8 | alpha_crown | 125000 | exit -9")


@pytest.mark.parametrize(
  "seconds, text",
  [(0.000866, "0.866"), (0.0123, "12.3"), (0.6614, "661"), (19.04, "19040")],
)
def test_per_point_times_keep_three_significant_digits(seconds, text):
  assert verifier._milliseconds(seconds) == text


def test_unknown_methods_and_bad_batch_sizes_are_refused():
  with pytest.raises(SystemExit, match="beta_crown"):
    verifier._checked_methods("crown,beta_crown")
  assert verifier._positive_ints("8,100") == (8, 100)
  for text in ("0", "eight", ""):
    with pytest.raises(SystemExit, match="--batch"):
      verifier._positive_ints(text)


def test_fast_calls_are_repeated_until_they_total_a_second():
  more = lambda times: verifier._more_calls(times, 5, 1.0, 1000, 60.0)  # noqa: E731
  assert more([]) and more([0.5] * 4)
  assert not more([0.5] * 5)  # five calls, 2.5 s
  assert more([0.001] * 5) and more([0.001] * 999)
  assert not more([0.001] * 1000)  # at most 1000 calls
  assert not more([61.0])  # over the budget
