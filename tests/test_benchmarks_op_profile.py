"""The per-operation profile: span accounting, HLO shapes, one real trace."""

import pytest

from cure_jax.benchmarks import op_profile


def _event(name, ts, dur, tid=1):
  return dict(ph="X", name=name, ts=ts, dur=dur, pid=1, tid=tid)


def test_an_operation_runs_from_its_event_to_its_end_event():
  events = [
    _event("end: conv.1", 900, 5, tid=2),  # on the pool thread, out of order
    _event("conv.1", 100, 10),  # its own event ends long before the work
    _event("fusion.2", 1000, 40),
    _event("end: fusion.2", 1040, 1),
    _event("ThunkExecutor::Execute", 50, 2000),  # the runtime's, not an op
    _event("copy.3", 1100, 7),  # no end event: its own duration
    dict(ph="M", name="thread_name", pid=1, tid=2),
  ]
  seconds = op_profile.op_seconds(events, {"conv.1", "fusion.2", "copy.3"})
  assert seconds == pytest.approx(
    {"conv.1": 805e-6, "fusion.2": 41e-6, "copy.3": 7e-6}
  )


def test_an_operation_inside_a_loop_sums_its_runs():
  events = [
    _event("dot.4", 0, 1),
    _event("end: dot.4", 30, 0),
    _event("dot.4", 100, 1),
    _event("end: dot.4", 150, 0),
    _event("dot.4", 200, 3),  # the last run's end fell outside the trace
  ]
  assert op_profile.op_seconds(events, {"dot.4"}) == pytest.approx(
    {"dot.4": (30 + 50 + 3) * 1e-6}
  )


def test_instruction_shapes_reads_the_compiled_hlo():
  hlo = """
HloModule jit_lower, entry_computation_layout={(f32[8,28,28,1]{3,2,1,0})}

%fused_computation (param_0: f32[8]) -> f32[8] {
  ROOT %negate.1 = f32[8]{0} negate(%param_0)
}

ENTRY %main.5 (x.1: f32[8,28,28,1]) -> f32[8,9] {
  %conv_general_dilated.24 = f32[1600,13,13,16]{3,2,1,0} convolution(%a, %b)
  ROOT %transpose_copy_fusion = f32[8,9]{1,0} fusion(%c), kind=kLoop
}
"""
  shapes = op_profile.instruction_shapes(hlo)
  assert shapes["conv_general_dilated.24"] == "f32[1600,13,13,16]{3,2,1,0}"
  assert shapes["transpose_copy_fusion"] == "f32[8,9]{1,0}"
  assert shapes["negate.1"] == "f32[8]{0}"


def test_a_profile_of_crown_ibp_names_its_operations_and_their_shapes():
  result = op_profile.run("small_cnn", "crown_ibp", batch=1, warmup=1)
  assert result["call_s"] > 0
  ops = result["ops"]
  assert ops, "no operation of the program was found in the trace"
  assert all(row["seconds"] >= 0 and row["shape"] for row in ops)
  assert [row["seconds"] for row in ops] == sorted(
    (row["seconds"] for row in ops), reverse=True
  )
  assert any(row["op"].startswith("conv") for row in ops)
  table = op_profile._table(result, top=3)  # noqa: SLF001
  assert table.count("\n| ") == 4  # the header and three operations
