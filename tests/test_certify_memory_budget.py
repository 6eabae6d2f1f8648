"""Tests for cure_jax/certify/memory_budget.py and the cascade's chunking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.certify import cascade, memory_budget
from cure_jax.models import MLP

NUM_CLASSES = 3
MODEL = MLP(num_classes=NUM_CLASSES, hidden_widths=(16, 16))


class _FakeStats:
  def __init__(self, temp):
    self.argument_size_in_bytes = 10
    self.output_size_in_bytes = 5
    self.temp_size_in_bytes = temp
    self.alias_size_in_bytes = 5


class _FakeCompiled:
  """An executable needing 10 + 100·size bytes."""

  def __init__(self, size):
    self.size = size

  def memory_analysis(self):
    return _FakeStats(100 * self.size)


def test_budget_bytes_explicit_default_and_bad(monkeypatch):
  assert memory_budget.budget_bytes(2.0) == 2 * memory_budget.GIB
  assert 0 < memory_budget.budget_bytes(None)
  # The default is a fraction of what is available when it is asked for
  # (which moves with the machine's load: fixed here).
  monkeypatch.setattr(memory_budget, "available_bytes", lambda: 10 * 2**30)
  expected = int(memory_budget.DEFAULT_FRACTION * 10 * 2**30)
  assert memory_budget.budget_bytes(None) == expected
  assert memory_budget.budget_bytes(0) == expected
  for bad in (-1.0, float("inf"), float("nan")):
    with pytest.raises(ValueError, match="memory budget"):
      memory_budget.budget_bytes(bad)


def test_available_bytes_reads_the_host():
  available = memory_budget.available_bytes()
  assert available > 0
  assert available == pytest.approx(
    memory_budget._meminfo_available() or available, rel=0.5
  )


def test_available_bytes_counts_the_memory_the_process_holds_free(
  monkeypatch,
):
  # Freed memory the allocator keeps is the process's to reuse, though the
  # kernel no longer counts it as available.
  monkeypatch.setattr(memory_budget, "_meminfo_available", lambda: 2**30)
  monkeypatch.setattr(
    memory_budget.host_memory, "free_heap_bytes", lambda: 3 * 2**30
  )
  cpu = jax.devices("cpu")[0]
  assert memory_budget.available_bytes(cpu) == 4 * 2**30


def test_compiled_and_analytic_bytes_grow_with_the_batch():
  fn = jax.jit(lambda x, w: jnp.tanh(x @ w) @ w.T)
  w = jnp.ones((64, 256))
  small, large = (
    memory_budget.compiled_bytes(fn.lower(jnp.ones((b, 64)), w).compile())
    for b in (8, 512)
  )
  assert small is not None and large > small
  # The outputs alone of the large batch: 512·64 floats.
  assert large >= 512 * 64 * 4
  a_small, a_large = (
    memory_budget.analytic_bytes(fn, jnp.ones((b, 64)), w) for b in (8, 512)
  )
  assert a_large > a_small >= 8 * 256 * 4


def test_compiled_bytes_is_none_without_analysis():
  class NoAnalysis:
    def memory_analysis(self):
      return None

  assert memory_budget.compiled_bytes(NoAnalysis()) is None
  assert memory_budget.compiled_bytes(_FakeCompiled(3)) == 310


def test_fit_batch_shrinks_until_it_fits():
  sizes = []

  def compile_at(size):
    sizes.append(size)
    return _FakeCompiled(size)

  chunk, compiled = memory_budget.fit_batch(
    compile_at, 100, 2500, "stage x", overhead=1.0
  )
  assert chunk == 24 and compiled.size == 24  # 10 + 2400 <= 2500
  assert sizes == [100, 24]
  chunk, _ = memory_budget.fit_batch(_FakeCompiled, 20, 10**6, "stage x")
  assert chunk == 20  # fits: no second compilation
  # The runtime's overhead counts: 1.5 · (10 + 100·16) > 2000 >= 1610, and
  # the chunk at least halves.
  chunk, _ = memory_budget.fit_batch(
    _FakeCompiled, 16, 2000, "stage x", overhead=1.5
  )
  assert chunk == 8


def test_fit_batch_uses_the_estimate_without_analysis():
  class NoAnalysis:
    def memory_analysis(self):
      return None

  chunk, _ = memory_budget.fit_batch(
    lambda size: NoAnalysis(), 64, 1000, "stage x", lambda size: 100 * size
  )
  assert chunk == 10


def test_fit_batch_error_names_the_computation_and_budget():
  with pytest.raises(memory_budget.MemoryBudgetError) as error:
    memory_budget.fit_batch(_FakeCompiled, 8, 50, "bound stage 'crown' of X")
  message = str(error.value)
  assert "bound stage 'crown' of X" in message
  assert "memory budget" in message and "memory_budget_gb" in message


def test_chunk_rows_pads_the_last_chunk():
  chunks = memory_budget.chunk_rows(np.arange(5), 2)
  assert [list(c) for c, _ in chunks] == [[0, 1], [2, 3], [4, 4]]
  assert [used for _, used in chunks] == [2, 2, 1]


def _problem(batch, seed=0):
  x = jax.random.uniform(jax.random.PRNGKey(seed + 1), (batch, 4, 4, 1))
  variables = MODEL.init(jax.random.PRNGKey(seed), x, train=False)
  labels = np.asarray(jnp.argmax(MODEL.apply(variables, x, train=False), -1))
  return variables, x, labels


def _stage_bytes(variables, x, labels, method, eps):
  compiled = cascade._min_margin_jit.lower(
    MODEL.apply,
    "linf",
    method,
    NUM_CLASSES,
    5,
    variables,
    x,
    jnp.asarray(labels, jnp.int32),
    jnp.float32(eps),
  ).compile()
  return memory_budget.compiled_bytes(compiled)


def test_a_small_budget_splits_the_batch_and_keeps_the_certificates(
  monkeypatch,
):
  variables, x, labels = _problem(16)
  chunks = []
  original = memory_budget.chunk_rows
  monkeypatch.setattr(
    memory_budget,
    "chunk_rows",
    lambda rows, chunk: (
      chunks.append((len(rows), chunk)) or original(rows, chunk)
    ),
  )
  common = dict(
    norm="linf",
    eps=0.05,
    num_classes=NUM_CLASSES,
    methods=("crown", "alpha_crown"),
    alpha_steps=5,
    gather=False,
  )
  reference = cascade.certify_batch(MODEL.apply, variables, x, labels, **common)
  need = _stage_bytes(variables, x, labels, "crown", 0.05)
  # Under the batch's need, over one point's need of either stage.
  one_point = max(
    _stage_bytes(variables, x[:1], labels[:1], method, 0.05)
    for method in ("crown", "alpha_crown")
  )
  budget_gb = max(0.4 * need, 1.5 * one_point) / memory_budget.GIB
  assert budget_gb * memory_budget.GIB < need
  chunks.clear()
  split = cascade.certify_batch(
    MODEL.apply, variables, x, labels, memory_budget_gb=budget_gb, **common
  )
  assert chunks and all(chunk < rows for rows, chunk in chunks[:1])
  np.testing.assert_array_equal(split.certified, reference.certified)
  np.testing.assert_array_equal(split.method_index, reference.method_index)
  # CROWN's margins (index 0) agree to round-off. α-CROWN's (certified by it
  # or by no stage) come from 5 Adam steps, whose updates are normalized by
  # the gradients' running size: the different summation order of another
  # batch size can move them by ~1e-4.
  by_crown = np.asarray(reference.method_index) == 0
  assert by_crown.any() and not by_crown.all()
  np.testing.assert_allclose(
    split.margins_lower[by_crown],
    reference.margins_lower[by_crown],
    rtol=1e-5,
    atol=1e-6,
  )
  np.testing.assert_allclose(
    split.margins_lower[~by_crown],
    reference.margins_lower[~by_crown],
    rtol=0,
    atol=1e-3,
  )


def test_a_thousand_points_run_in_chunks_within_the_budget(monkeypatch):
  variables, x, labels = _problem(1000, seed=3)
  need = _stage_bytes(variables, x, labels, "alpha_crown", 0.05)
  chunks = []
  original = memory_budget.chunk_rows
  monkeypatch.setattr(
    memory_budget,
    "chunk_rows",
    lambda rows, chunk: chunks.append(chunk) or original(rows, chunk),
  )
  result = cascade.certify_batch(
    MODEL.apply,
    variables,
    x,
    labels,
    norm="linf",
    eps=0.05,
    num_classes=NUM_CLASSES,
    methods=("alpha_crown",),
    alpha_steps=5,
    memory_budget_gb=0.25 * need / memory_budget.GIB,
  )
  assert chunks and max(chunks) < 1000
  assert result.certified.shape == (1000,)
  assert not np.any(np.asarray(result.falsified))


def test_a_tiny_budget_raises_naming_stage_model_and_budget():
  variables, x, labels = _problem(4)
  with pytest.raises(memory_budget.MemoryBudgetError) as error:
    cascade.certify_batch(
      MODEL.apply,
      variables,
      x,
      labels,
      norm="l2",
      eps=0.1,
      num_classes=NUM_CLASSES,
      methods=("crown",),
      memory_budget_gb=1e-9,
    )
  message = str(error.value)
  assert "'crown'" in message and "(l2)" in message
  assert "MLP" in message and "GiB" in message
