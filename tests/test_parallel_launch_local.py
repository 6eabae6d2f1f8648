"""Tests for launch/local.py, the one-machine multi-process launcher."""

import importlib.util
import io
import pathlib
import socket
import sys
import time

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "launch" / "local.py"
_SPEC = importlib.util.spec_from_file_location("launch_local", _PATH)
local = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(local)

_EXIT_WITH_RANK_TIMES_3 = (
  'import os, sys; rank = int(os.environ["CURE_PROCESS_ID"]); '
  'print("rank", rank, "of", os.environ["CURE_NUM_PROCESSES"], '
  'os.environ["CURE_COORDINATOR"]); sys.exit(3 * rank)'
)


def test_process_env_sets_coordinates_and_device_count():
  base = {
    "PATH": "/bin",
    "XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8",
  }
  env = local.process_env(
    base, 1, 4, "127.0.0.1:999", cpu_devices=2, platform="cpu"
  )
  assert (
    env["CURE_PROCESS_ID"],
    env["CURE_NUM_PROCESSES"],
    env["CURE_COORDINATOR"],
  ) == ("1", "4", "127.0.0.1:999")
  assert env["XLA_FLAGS"] == (
    "--xla_foo=1 --xla_force_host_platform_device_count=2"
  )
  assert env["JAX_PLATFORMS"] == "cpu" and env["PATH"] == "/bin"
  assert base["XLA_FLAGS"].endswith("=8")  # The base is not modified.
  assert "JAX_PLATFORMS" not in local.process_env({}, 0, 1, "h:1")


def test_with_cpu_devices_replaces_only_the_device_count():
  assert local.with_cpu_devices({}, 3) == {
    "XLA_FLAGS": "--xla_force_host_platform_device_count=3"
  }
  base = {"A": "1", "XLA_FLAGS": "--xla_force_host_platform_device_count=8 -x"}
  assert local.with_cpu_devices(base, 1) == {
    "A": "1",
    "XLA_FLAGS": "-x --xla_force_host_platform_device_count=1",
  }
  assert base["XLA_FLAGS"].startswith("--xla_force")  # not modified


def test_free_port_can_be_bound():
  port = local.free_port()
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", port))


def test_launch_prefixes_output_and_succeeds_when_all_succeed():
  out = io.StringIO()
  command = [
    sys.executable,
    "-c",
    'import os; print("hello", '
    'os.environ["CURE_PROCESS_ID"], os.environ["CURE_COORDINATOR"])',
  ]
  assert local.launch(command, 3, out=out) == 0
  lines = sorted(out.getvalue().splitlines())
  assert [line.split()[:3] for line in lines] == [
    ["[0]", "hello", "0"],
    ["[1]", "hello", "1"],
    ["[2]", "hello", "2"],
  ]
  assert len({line.split()[3] for line in lines}) == 1  # One coordinator.
  assert lines[0].split()[3].startswith("127.0.0.1:")


def test_launch_returns_first_failure_and_stops_the_others():
  out = io.StringIO()
  script = (
    'import os, sys, time; rank = int(os.environ["CURE_PROCESS_ID"]);'
    " time.sleep(0.2) if rank else time.sleep(60); sys.exit(7)"
  )
  start = time.monotonic()
  assert local.launch([sys.executable, "-c", script], 2, out=out) == 7
  assert time.monotonic() - start < 10  # Process 0 did not sleep 60 s.


def test_launch_times_out_with_status_124():
  start = time.monotonic()
  status = local.launch(
    [sys.executable, "-c", "import time; time.sleep(60)"],
    2,
    timeout=0.5,
    out=io.StringIO(),
  )
  assert status == 124 and time.monotonic() - start < 10


def test_command_line_returns_failing_status(capsys):
  status = local.main(
    ["-n", "2", "--", sys.executable, "-c", _EXIT_WITH_RANK_TIMES_3]
  )
  assert status == 3
  assert "[1] rank 1 of 2 127.0.0.1:" in capsys.readouterr().out


@pytest.mark.parametrize(
  "argv, message",
  [
    (["-n", "2"], "give the command to run after --"),
    (["-n", "0", "--", "true"], "--num_processes must be >= 1"),
    (["--cpu_devices_per_process=0", "--", "true"], "must be >= 1"),
  ],
)
def test_command_line_explains_bad_arguments(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    local.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
