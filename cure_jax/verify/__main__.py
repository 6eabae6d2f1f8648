r"""Command line: verify one instance or a VNN-COMP benchmark.

  python -m cure_jax.verify MODEL.onnx PROPERTY.vnnlib [--timeout 60] \
      [--out result.txt] [--summary summary.csv]
  python -m cure_jax.verify --instances BENCHMARK/instances.csv \
      [--out_dir BENCHMARK/results] [--summary BENCHMARK/results/summary.csv]

The stages run in order: a PGD counterexample search, the bound stages
(IBP → CROWN-IBP → CROWN → α-CROWN), then β-CROWN branch and bound ("bab",
ReLU chains only; ``--nobab`` leaves it out) for the time left. Each
instance gets VNN-COMP's result file (``unsat``, ``sat`` and the
counterexample, ``timeout`` or ``unknown``) and a row of the CSV summary with
its preparation seconds (load, parse, compile) apart from its verification
seconds. Paths in instances.csv are relative to its folder; its timeouts
apply unless ``--timeout`` is given. Exit status: 0, or 2 for an instance
that cannot be verified (a single instance) / a missing csv.
"""

import argparse
import os
import sys

from cure_jax import host_memory
from cure_jax.bounds.slope_optimization import DEFAULT_STEPS
from cure_jax.certify.bab_search import BaBSettings
from cure_jax.verify import falsify
from cure_jax.verify.benchmark_runner import INSTANCE_ERRORS, verify_benchmark
from cure_jax.verify.instance_runner import (
  DEFAULT_STAGES,
  STAGES,
  verify_instance,
)
from cure_jax.verify.result_files import write_result, write_summary

DEFAULT_TIMEOUT = 60.0


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m cure_jax.verify",
    description="Verify ONNX networks against VNNLIB properties.",
  )
  parser.add_argument("onnx", nargs="?", help="the network (.onnx)")
  parser.add_argument("vnnlib", nargs="?", help="the property (.vnnlib)")
  parser.add_argument("--instances", help="a VNN-COMP instances.csv")
  parser.add_argument(
    "--timeout",
    type=float,
    help=f"seconds per instance (default: the csv's, or {DEFAULT_TIMEOUT:g})",
  )
  parser.add_argument("--out", help="result file of a single instance")
  parser.add_argument(
    "--out_dir", help="result files of a benchmark (default: <csv dir>/results)"
  )
  parser.add_argument(
    "--summary",
    help="CSV summary (default for a benchmark: <out_dir>/summary.csv)",
  )
  parser.add_argument(
    "--stages",
    default=",".join(DEFAULT_STAGES),
    help=f"stages in order, from {list(STAGES)}",
  )
  parser.add_argument(
    "--nobab",
    action="store_true",
    help="leave out branch and bound (the 'bab' stage)",
  )
  parser.add_argument(
    "--bab_batch",
    type=int,
    default=BaBSettings().batch_domains,
    help="branch and bound: domains split per step",
  )
  parser.add_argument(
    "--alpha_steps",
    type=int,
    default=DEFAULT_STEPS,
    help="α-CROWN's optimization steps (α,β-CROWN's 100; it stops early "
    "once every row is proven)",
  )
  parser.add_argument("--pgd_steps", type=int, default=50)
  parser.add_argument("--pgd_starts", type=int, default=8)
  return parser


def _options(args) -> dict:
  stages = tuple(s for s in args.stages.split(",") if s)
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise SystemExit(f"unknown stage(s) {unknown}; choose from {list(STAGES)}.")
  if args.nobab:
    stages = tuple(s for s in stages if s != "bab")
  if args.bab_batch < 1:
    raise SystemExit(f"--bab_batch must be >= 1; got {args.bab_batch}.")
  attack = falsify.AttackSettings(steps=args.pgd_steps, starts=args.pgd_starts)
  bab = BaBSettings(batch_domains=args.bab_batch, candidate_steps=10)
  return dict(
    stages=stages, alpha_steps=args.alpha_steps, attack=attack, bab=bab
  )


def _report(result) -> None:
  print(
    f"{result.result:8s} {result.decided_by:12s} prepare "
    f"{result.prepare_seconds:7.2f} s  verify {result.verify_seconds:7.2f} s  "
    f"{os.path.basename(result.onnx_path)} "
    f"{os.path.basename(result.vnnlib_path)}"
    + (f"  {result.message}" if result.message else ""),
    flush=True,
  )


def _single(args, options) -> int:
  timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
  try:
    result = verify_instance(args.onnx, args.vnnlib, timeout, **options)
  except INSTANCE_ERRORS as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
    return 2
  _report(result)
  if args.out:
    write_result(args.out, result)
  if args.summary:
    write_summary(args.summary, [result])
  return 0


def _benchmark(args, options) -> int:
  if not os.path.exists(args.instances):
    print(f"no instances file {args.instances}", file=sys.stderr)
    return 2
  results = verify_benchmark(
    args.instances,
    args.out_dir,
    args.summary,
    args.timeout,
    log=_report,
    **options,
  )
  counts = {
    r: sum(x.result == r for x in results)
    for r in sorted({x.result for x in results})
  }
  print(f"{len(results)} instances: {counts}", flush=True)
  return 0


def main(argv: list[str] | None = None) -> int:
  """Runs the command line ``argv`` (without the program name)."""
  parser = _parser()
  args = parser.parse_args(argv)
  if args.instances and (args.onnx or args.vnnlib):
    parser.error("give either MODEL.onnx PROPERTY.vnnlib or --instances.")
  if not args.instances and not (args.onnx and args.vnnlib):
    parser.error("give MODEL.onnx PROPERTY.vnnlib, or --instances CSV.")
  options = _options(args)
  return _benchmark(args, options) if args.instances else _single(args, options)


def run() -> None:
  """``python -m cure_jax.verify``: `main` in a process that keeps the memory
  it frees for its next bound call (`host_memory.keep_freed_memory`)."""
  host_memory.keep_freed_memory()
  sys.exit(main())


if __name__ == "__main__":
  run()
