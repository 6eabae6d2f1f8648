"""VNN-COMP's result file per instance, and a CSV summary of a benchmark.

The result file holds one word — ``unsat``, ``sat``, ``timeout``,
``unknown`` (or ``error``) — and, after ``sat``, the counterexample::

  sat
  ((X_0 0.25)
   (X_1 0.5)
   (Y_0 -1.0)
   (Y_1 2.0))
"""

import csv
import os
from collections.abc import Iterable

from cure_jax.verify.instance_runner import SAT, InstanceResult

SUMMARY_FIELDS = (
  "onnx",
  "vnnlib",
  "result",
  "decided_by",
  "prepare_seconds",
  "verify_seconds",
  "timeout",
  "message",
)


def result_text(result: InstanceResult) -> str:
  """The VNN-COMP result file's text for one instance (−0.0 written as 0.0)."""
  if result.result != SAT:
    return result.result + "\n"
  found = result.counterexample
  pairs = [f"(X_{i} {float(v) + 0.0!r})" for i, v in enumerate(found.inputs)]
  pairs += [f"(Y_{j} {float(v) + 0.0!r})" for j, v in enumerate(found.outputs)]
  return "sat\n(" + "\n ".join(pairs) + ")\n"


def write_result(path: str, result: InstanceResult) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with open(path, "w") as f:
    f.write(result_text(result))


def write_summary(path: str, results: Iterable[InstanceResult]) -> None:
  """One CSV row per instance: `SUMMARY_FIELDS` (seconds with 4 decimals)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(SUMMARY_FIELDS)
    for r in results:
      writer.writerow(
        [
          r.onnx_path,
          r.vnnlib_path,
          r.result,
          r.decided_by,
          f"{r.prepare_seconds:.4f}",
          f"{r.verify_seconds:.4f}",
          f"{r.timeout:g}",
          r.message,
        ]
      )
