"""Tests for cure_jax/host_memory.py: freed memory reused, not page-faulted."""

import json
import statistics
import subprocess
import sys
import textwrap

import pytest

from cure_jax import host_memory

# Each call of a jitted function allocates a 64 MB output (past glibc's
# largest mmap threshold, 32 MB): page faults per call, by default and kept.
SCRIPT = textwrap.dedent(
  """
  import json, resource, sys
  from cure_jax import host_memory
  kept = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else None
  import jax, jax.numpy as jnp
  size = 1 << 24
  f = jax.jit(lambda x: jnp.cumsum(x) * 2.0)
  x = jnp.ones((size,), jnp.float32)
  f(x).block_until_ready()
  faults = []
  for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  print(json.dumps(dict(kept=kept, faults=faults, pages=size * 4 // 4096,
                        free=host_memory.free_heap_bytes(), bytes=size * 4)))
  """
)

glibc_only = pytest.mark.skipif(
  host_memory._glibc() is None or not sys.platform.startswith("linux"),
  reason="keep_freed_memory configures glibc's malloc (Linux)",
)


def _run(mode: str) -> dict:
  done = subprocess.run(
    [sys.executable, "-c", SCRIPT, mode],
    capture_output=True,
    text=True,
    check=True,
    timeout=300,
  )
  return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_kept_memory_is_reused_without_page_faults():
  default, kept = _run("default"), _run("keep")
  # By default each call maps its 64 MB output afresh and faults every page.
  assert min(default["faults"]) > default["pages"] // 2
  # Kept, the heap grows to the calls' peak, then the freed blocks of the
  # previous call are reused (now and then the heap grows once more, when
  # other allocations took the freed space: the median call faults nothing).
  assert kept["kept"] is True
  assert statistics.median_high(kept["faults"][1:]) < kept["pages"] // 20
  # ... and counted as free memory of the process.
  assert kept["free"] >= kept["bytes"]


def test_free_heap_bytes_is_a_count():
  assert host_memory.free_heap_bytes() >= 0
