r"""Where a bound computation's time goes, XLA operation by operation.

  python -m cure_jax.benchmarks.op_profile [--model=small_cnn] \
      [--method=crown] [--batch=8] [--eps=0.1] [--alpha-steps=20] [--top=15]

Bounds the verifier benchmark's batch (`verifier.build`: random
IBP-initialized weights, random inputs and labels, the 9 margins over the
l∞ ball ∩ [0, 1]) with one cure_jax method under `cure_jax.bounds.jit`, in
a process that keeps its freed memory (as the certify command), then traces
one more call with `jax.profiler` and prints, per operation of the compiled
program, its time from start to end, its share of the call and its result's
shape.

Start to end, not the trace event's duration: XLA:CPU runs convolutions on
its thread pool after the operation's own event has ended, and marks their
completion with a separate ``end: <operation>`` event, so a profile that
sums each operation's events misses most of a convolution's time.
Operations on different cores overlap, so the shares can add up to more
than 100%, and a span also counts the time an operation waits for the
thread pool while others run on it: an operation that runs beside others
looks longer than it is (CROWN-IBP's |W| of the small CNN's dense layer,
under 0.2 ms alone, spanned 3.2 ms of a 5.1 ms call). Time an operation alone
before trusting its span.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable

END = "end: "
_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ", re.M)


def op_seconds(events: Iterable[dict], operations) -> dict[str, float]:
  """Seconds per operation, from its trace event to its ``end:``
  event (its own event's duration when it has none).

  Args:
    events: Chrome-trace events (``ph``, ``name``, ``ts`` and ``dur`` in
      microseconds).
    operations: the names to count (the program's instructions); other
      events (the runtime's, Python's) are left out.

  Returns:
    {operation: seconds}, summed over its runs (a loop runs one many times).
  """
  complete = sorted(
    (e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"]
  )
  running, total = {}, collections.Counter()
  for event in complete:
    name = event["name"]
    op = name[len(END) :] if name.startswith(END) else None
    if op is not None and op in running:
      start = running.pop(op)["ts"]
      total[op] += event["ts"] + event.get("dur", 0) - start
    elif op is None and name in operations:
      if name in running:  # ran again without an end event
        total[name] += running[name].get("dur", 0)
      running[name] = event
  for name, event in running.items():
    total[name] += event.get("dur", 0)
  return {name: micros / 1e6 for name, micros in total.items()}


def instruction_shapes(hlo_text: str) -> dict[str, str]:
  """{instruction name: result shape} of a compiled program's HLO text."""
  return dict(_HLO_INSTRUCTION.findall(hlo_text))


def _trace_events(directory: str) -> list[dict]:
  paths = glob.glob(
    os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True
  )
  if len(paths) != 1:
    raise RuntimeError(
      f"jax.profiler wrote {len(paths)} Perfetto traces under {directory}, "
      "not one: this JAX version's profiler does not export them as "
      "`start_trace(..., create_perfetto_trace=True)` asks."
    )
  (path,) = paths
  with gzip.open(path) as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def run(
  model_name: str = "small_cnn",
  method: str = "crown",
  batch: int = 8,
  eps: float = 0.1,
  alpha_steps: int = 20,
  warmup: int = 3,
) -> dict:
  """Profiles one call; returns its seconds and the operations' rows,
  slowest first: {"call_s": ..., "ops": [{"op", "seconds", "shape"}]}."""
  import jax  # noqa: PLC0415 (after keep_freed_memory, in main)

  from cure_jax.benchmarks import verifier  # noqa: PLC0415

  call = verifier.bounding_call(model_name, method, batch, eps, alpha_steps)
  for _ in range(warmup):
    jax.block_until_ready(call())
  shapes = instruction_shapes(call.func.lower(*call.args).compile().as_text())
  with tempfile.TemporaryDirectory() as directory:
    jax.profiler.start_trace(directory, create_perfetto_trace=True)
    start = time.perf_counter()
    jax.block_until_ready(call())
    call_s = time.perf_counter() - start
    jax.profiler.stop_trace()
    seconds = op_seconds(_trace_events(directory), shapes)
  ops = [
    dict(op=name, seconds=s, shape=shapes[name])
    for name, s in sorted(seconds.items(), key=lambda item: -item[1])
  ]
  return dict(call_s=call_s, ops=ops)


def _table(result: dict, top: int) -> str:
  call_s = result["call_s"]
  lines = [
    f"call: {call_s * 1e3:.1f} ms",
    "",
    "| operation | ms | share of the call | result |",
    "|---|---|---|---|",
  ]
  for row in result["ops"][:top]:
    lines.append(
      f"| {row['op']} | {row['seconds'] * 1e3:.2f} | "
      f"{row['seconds'] / call_s:.0%} | {row['shape']} |"
    )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="small_cnn")
  parser.add_argument("--method", default="crown")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--eps", type=float, default=0.1)
  parser.add_argument("--alpha-steps", type=int, default=20)
  parser.add_argument("--top", type=int, default=15)
  args = parser.parse_args(argv)
  from cure_jax import host_memory  # noqa: PLC0415

  host_memory.keep_freed_memory()  # before JAX's CPU client exists
  result = run(args.model, args.method, args.batch, args.eps, args.alpha_steps)
  print(_table(result, args.top))


if __name__ == "__main__":
  main()
