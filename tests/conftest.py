"""Shared by every test: one XLA compilation cache for the whole session,
and XLA flags that compile the tests' small programs faster.

Many tests compile the same programs (the train steps of several
``train_and_evaluate`` runs, the subprocess workers of the multi-device and
restart tests, the certification cascade). JAX's persistent compilation
cache in a directory made for this test run compiles each distinct program
once per test run, and the pytest-xdist workers and the subprocesses share it
through the environment (the controller sets it before they start). A
fresh directory each run means no cache from an earlier checkout can
hide a compile error; a ``JAX_COMPILATION_CACHE_DIR`` the user set is kept.
"""

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
    prefix="cure_jax_test_xla_cache_"
  )
# Cache every program, however fast it compiled (JAX's default is 1 s).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# The tests' programs are tiny: XLA:CPU spends far longer compiling them than
# running them (about two thirds of the suite's time). Its classic loop
# emitters and no expensive LLVM passes compile about a quarter faster; the
# programs compute the same values up to float32 round-off (a few compile
# slower: docs/performance.md, "Test suite"). Kept only where this jaxlib
# knows both flags (an unknown flag aborts the process), checked once by the
# controller in a subprocess; the xdist workers and the tests' subprocesses
# inherit the result through the environment.
FAST_COMPILE_FLAGS = (
  "--xla_cpu_use_fusion_emitters=false",
  "--xla_llvm_disable_expensive_passes=true",
)


def _with_fast_compile_flags(flags: str) -> str | None:
  """``flags`` plus FAST_COMPILE_FLAGS, or None if XLA rejects them."""
  combined = " ".join([flags, *FAST_COMPILE_FLAGS]).strip()
  probe = subprocess.run(
    [sys.executable, "-c", "import jax; jax.devices()"],
    env=dict(os.environ, XLA_FLAGS=combined, JAX_PLATFORMS="cpu"),
    capture_output=True,
    check=False,
  )
  return combined if probe.returncode == 0 else None


if "PYTEST_XDIST_WORKER" not in os.environ and not any(
  f.split("=")[0] in os.environ.get("XLA_FLAGS", "") for f in FAST_COMPILE_FLAGS
):
  _flags = _with_fast_compile_flags(os.environ.get("XLA_FLAGS", ""))
  if _flags is not None:
    os.environ["XLA_FLAGS"] = _flags

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# In case a plugin imported JAX before this file set the environment.
jax.config.update(
  "jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"]
)
jax.config.update(
  "jax_persistent_cache_min_compile_time_secs",
  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)


# With CURE_JAX_COMPILE_TIMES=DIR, each process writes DIR/<worker>.json:
# per test, its seconds of wall time and of JAX's tracing, lowering and XLA
# compilation (JAX's own monitoring events), to find what a test spends on.
_COMPILE_EVENTS = {
  "/jax/core/compile/jaxpr_trace_duration": "trace",
  "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
  "/jax/core/compile/backend_compile_duration": "compile",
}
_TIMES = collections.defaultdict(collections.Counter)
_CURRENT_TEST = ["(collection)"]

if os.environ.get("CURE_JAX_COMPILE_TIMES"):

  def _record(event, duration, **kwargs):
    del kwargs
    if event in _COMPILE_EVENTS:
      _TIMES[_CURRENT_TEST[0]][_COMPILE_EVENTS[event]] += duration

  jax.monitoring.register_event_duration_secs_listener(_record)

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_protocol(item, nextitem):
    del nextitem
    _CURRENT_TEST[0] = item.nodeid
    start = time.perf_counter()
    yield
    _TIMES[item.nodeid]["wall"] += time.perf_counter() - start


def pytest_unconfigure(config):
  del config
  if _TIMES:
    directory = os.environ["CURE_JAX_COMPILE_TIMES"]
    os.makedirs(directory, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(directory, f"{worker}.json"), "w") as f:
      json.dump(_TIMES, f, indent=1)
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
