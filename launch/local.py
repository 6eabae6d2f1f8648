#!/usr/bin/env python3
"""Runs N copies of a command as the processes of one JAX job on this machine.

  python launch/local.py --num_processes=2 --cpu_devices_per_process=4 -- \
      python -m cure_jax.main --config=configs/mnist.py --workdir=/tmp/wd

Process i gets the environment that `cure_jax.parallel.initialize()` reads:
CURE_COORDINATOR=127.0.0.1:<free port>, CURE_NUM_PROCESSES=N and
CURE_PROCESS_ID=i. Their output is streamed line by line, prefixed `[i] `.
When a process fails, the others are stopped and its exit status is returned;
0 means every process succeeded. This exercises the multi-host code path
(cross-process collectives over gloo on CPU) on a single machine.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_POLL_SECONDS = 0.05
_GRACE_SECONDS = 5.0
_TIMEOUT_STATUS = 124


def free_port(host: str = "127.0.0.1") -> int:
  """Returns a TCP port on `host` that was free a moment ago."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind((host, 0))
    return sock.getsockname()[1]


def with_cpu_devices(env: Mapping[str, str], count: int) -> dict[str, str]:
  """A copy of `env` whose XLA_FLAGS simulate `count` CPU devices.

  An earlier device count in XLA_FLAGS is replaced, other flags are kept.
  """
  flags = [
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith(_DEVICE_COUNT_FLAG)
  ]
  return {
    **env,
    "XLA_FLAGS": " ".join(flags + [f"{_DEVICE_COUNT_FLAG}={count}"]),
  }


def process_env(
  base: Mapping[str, str],
  process_id: int,
  num_processes: int,
  coordinator: str,
  cpu_devices: int | None = None,
  platform: str | None = None,
) -> dict[str, str]:
  """A copy of `base` with the CURE_* coordinates of one process.

  `cpu_devices`, if set, is the number of CPU devices the process simulates
  (`XLA_FLAGS=--xla_force_host_platform_device_count`); `platform`, if set,
  becomes `JAX_PLATFORMS`.
  """
  env = (
    dict(base) if cpu_devices is None else with_cpu_devices(base, cpu_devices)
  )
  env.update(
    CURE_COORDINATOR=coordinator,
    CURE_NUM_PROCESSES=str(num_processes),
    CURE_PROCESS_ID=str(process_id),
    PYTHONUNBUFFERED="1",
  )
  if platform is not None:
    env["JAX_PLATFORMS"] = platform
  return env


def launch(
  command: Sequence[str],
  num_processes: int,
  cpu_devices: int | None = None,
  platform: str | None = None,
  timeout: float | None = None,
  out=None,
) -> int:
  """Starts the processes, streams their prefixed output to `out` (default
  stdout) and waits for all of them, at most `timeout` seconds (None: no
  limit).

  Returns 0 if all processes exit with 0; else the status of the first
  failure (124 on timeout, 130 on Ctrl-C).
  """
  out = sys.stdout if out is None else out
  coordinator = f"127.0.0.1:{free_port()}"
  lock = threading.Lock()
  procs, pumps = [], []
  try:
    for i in range(num_processes):
      env = process_env(
        os.environ, i, num_processes, coordinator, cpu_devices, platform
      )
      # Own session, so that stopping a process reaches its children too.
      proc = subprocess.Popen(
        list(command),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
      )
      procs.append(proc)
      pump = threading.Thread(
        target=_pump, args=(proc.stdout, f"[{i}] ", out, lock), daemon=True
      )
      pump.start()
      pumps.append(pump)
    status = _wait_all(procs, timeout)
  except KeyboardInterrupt:
    status = 130
  finally:
    _stop(procs)
    for pump in pumps:
      pump.join(timeout=_GRACE_SECONDS)
  return status


def _pump(stream, prefix: str, out, lock: threading.Lock) -> None:
  """Copies lines of `stream` to `out` with `prefix`, one whole line a time."""
  for line in stream:
    with lock:
      out.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
      out.flush()
  stream.close()


def _wait_all(procs: Sequence[subprocess.Popen], timeout: float | None) -> int:
  """Waits until all processes succeeded, one failed, or time ran out."""
  deadline = None if timeout is None else time.monotonic() + timeout
  while True:
    codes = [p.poll() for p in procs]
    failed = [c for c in codes if c not in (None, 0)]
    if failed:
      # A killed process reports -signal; shells report 128 + signal.
      return failed[0] if failed[0] > 0 else 128 - failed[0]
    if all(c == 0 for c in codes):
      return 0
    if deadline is not None and time.monotonic() > deadline:
      return _TIMEOUT_STATUS
    time.sleep(_POLL_SECONDS)


def _stop(procs: Sequence[subprocess.Popen]) -> None:
  """Terminates the still-running processes (SIGTERM, then SIGKILL)."""
  running = [p for p in procs if p.poll() is None]
  for sig in (signal.SIGTERM, signal.SIGKILL):
    for proc in running:
      try:
        os.killpg(proc.pid, sig)  # The process group this launcher created.
      except ProcessLookupError:
        pass
    deadline = time.monotonic() + _GRACE_SECONDS
    while running and time.monotonic() < deadline:
      running = [p for p in running if p.poll() is None]
      time.sleep(_POLL_SECONDS)
    if not running:
      return


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    usage="%(prog)s [options] -- COMMAND [ARGS...]",
  )
  parser.add_argument(
    "-n",
    "--num_processes",
    type=int,
    default=2,
    help="number of processes (default 2)",
  )
  parser.add_argument(
    "--cpu_devices_per_process",
    type=int,
    default=None,
    help="simulate this many CPU devices in each process",
  )
  parser.add_argument(
    "--platform", default=None, help="JAX_PLATFORMS for the processes, e.g. cpu"
  )
  parser.add_argument(
    "--timeout",
    type=float,
    default=None,
    help="seconds before all processes are stopped",
  )
  parser.add_argument(
    "command", nargs=argparse.REMAINDER, help="the command each process runs"
  )
  args = parser.parse_args(argv)
  if args.command[:1] == ["--"]:
    args.command = args.command[1:]
  if not args.command:
    parser.error(
      "give the command to run after --, e.g. "
      "-- python -m cure_jax.main --config=configs/mnist.py "
      "--workdir=/tmp/wd"
    )
  if args.num_processes < 1:
    parser.error(f"--num_processes must be >= 1, got {args.num_processes}")
  if args.cpu_devices_per_process is not None and (
    args.cpu_devices_per_process < 1
  ):
    parser.error("--cpu_devices_per_process must be >= 1")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the exit status."""
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  # Turn SIGTERM into SystemExit so that `launch` stops the processes first.
  previous = signal.signal(
    signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum)
  )
  try:
    return launch(
      args.command,
      args.num_processes,
      cpu_devices=args.cpu_devices_per_process,
      platform=args.platform,
      timeout=args.timeout,
    )
  finally:
    signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
  sys.exit(main())
