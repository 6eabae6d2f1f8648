"""Shared by every test: one XLA compilation cache for the whole session.

Many tests compile the same programs (the train steps of several
``train_and_evaluate`` runs, the subprocess workers of the multi-device and
restart tests, the certification cascade). JAX's persistent compilation
cache in a directory made for this test run compiles each distinct program
once per test run, and the pytest-xdist workers and the subprocesses share it
through the environment (the controller sets it before they start). A
fresh directory each run means no cache from an earlier checkout can
hide a compile error; a ``JAX_COMPILATION_CACHE_DIR`` the user set is kept.
"""

import os
import shutil
import tempfile

_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
    prefix="cure_jax_test_xla_cache_"
  )
# Cache every program, however fast it compiled (JAX's default is 1 s).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# In case a plugin imported JAX before this file set the environment.
jax.config.update(
  "jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"]
)
jax.config.update(
  "jax_persistent_cache_min_compile_time_secs",
  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
