"""Host memory freed by one XLA:CPU call, kept for the next one.

XLA:CPU allocates each call's temporary buffers afresh: one block per call,
89 MB for CROWN on the small MNIST CNN at batch 8. glibc's malloc serves a
block that large by ``mmap`` and unmaps it when it is freed, so every call
page-faults its temporaries in again and the kernel zeroes each page: about
22 000 faults per call there, a fifth of its time on a 2-core CPU
(`docs/performance.md`). `keep_freed_memory` makes freed blocks stay in the
process for reuse:

* glibc: never ``mmap`` a block (``M_MMAP_MAX = 0``) and never trim the
  heap's top (``M_TRIM_THRESHOLD = (size_t) −1``), so the heap grows by
  ``brk`` to the process's peak and keeps it;
* JAX: synchronous CPU dispatch (``jax_cpu_enable_async_dispatch=False``),
  so that a call allocates on the calling thread, from glibc's main arena:
  the other threads' arenas are 64 MB heaps, and a larger block falls back
  to ``mmap`` whatever ``M_MMAP_MAX`` says.

What it costs: the process's resident memory stays at its peak until it
exits, and Python waits for each call to finish before it goes on (the
certification cascade reads each stage's result before the next one
anyway). `python -m cure_jax.certify` and `python -m cure_jax.verify` call
it first; a script of one's own that certifies can too. Training does not:
its loop relies on asynchronous dispatch. `free_heap_bytes` tells how much
freed memory the process holds, which `certify.memory_budget` counts as
available.
"""

import ctypes
import ctypes.util
import functools

import jax

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Passed as an int, −1 becomes (size_t) −1 in glibc: a threshold never reached.
_NEVER = -1


class _MallInfo2(ctypes.Structure):
  """glibc's ``struct mallinfo2`` (2.33+): ten ``size_t`` counters."""

  _fields_ = [
    (name, ctypes.c_size_t)
    for name in (
      "arena",
      "ordblks",
      "smblks",
      "hblks",
      "hblkhd",
      "usmblks",
      "fsmblks",
      "uordblks",
      "fordblks",
      "keepcost",
    )
  ]


@functools.cache
def _glibc():
  """The C library when it is glibc (it has ``mallopt`` and ``mallinfo2``),
  else None (macOS, musl, Windows)."""
  name = ctypes.util.find_library("c")
  if name is None:
    return None
  try:
    libc = ctypes.CDLL(name)
  except OSError:
    return None
  if not (hasattr(libc, "mallopt") and hasattr(libc, "mallinfo2")):
    return None
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  libc.mallopt.restype = ctypes.c_int
  libc.mallinfo2.argtypes = ()
  libc.mallinfo2.restype = _MallInfo2
  return libc


def keep_freed_memory() -> bool:
  """Keeps freed host memory in the process and dispatches CPU calls
  synchronously (see the module's docstring).

  Call it before JAX's first computation: JAX reads the dispatch setting
  when it creates its CPU client. Calling it again changes nothing.

  Returns:
    True if glibc's allocator was configured; False where the C library is
    not glibc (only the dispatch setting applies there).
  """
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  libc = _glibc()
  if libc is None:
    return False
  no_mmap = libc.mallopt(_M_MMAP_MAX, 0)
  no_trim = libc.mallopt(_M_TRIM_THRESHOLD, _NEVER)
  return bool(no_mmap and no_trim)


def free_heap_bytes() -> int:
  """Bytes the process's allocator holds free for reuse (glibc's
  ``mallinfo2().fordblks`` over every arena); 0 where it is not glibc."""
  libc = _glibc()
  return 0 if libc is None else int(libc.mallinfo2().fordblks)
