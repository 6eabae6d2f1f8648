"""Verifies one (network, property) instance: falsify, then prove.

Order: a PGD search for a counterexample (`falsify`), then per region the
bound cascade (`unsafe_bounds`) and, for the disjuncts it leaves open,
branch and bound (`bab_stage`, the stage named "bab"; ReLU chains only) for
the time left. The verdict is

* ``sat``     a confirmed counterexample exists;
* ``unsat``   every disjunct of every region is proven infeasible;
* ``timeout`` the time ran out first;
* ``unknown`` neither, within the time.

Time is split into *preparation* (loading the network, parsing the property,
compiling each program the first time its shapes are met — later instances
on the same network reuse them) and *verification* (running them, checking
counterexamples). The timeout limits verification time; a program already
running is not interrupted, so an instance can end a little past it.
"""

import dataclasses
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from cure_jax.bounds.slope_optimization import DEFAULT_STEPS
from cure_jax.certify.bab_search import FALSIFIED, VERIFIED, BaBSettings
from cure_jax.interchange.vnnlib import VnnlibProperty, read_vnnlib
from cure_jax.verify import bab_stage, falsify, unsafe_bounds
from cure_jax.verify.loaded_network import LoadedNetwork, load_network

SAT, UNSAT, TIMEOUT, UNKNOWN, ERROR = (
  "sat",
  "unsat",
  "timeout",
  "unknown",
  "error",
)
# Every stage, in order: the bound stages, then branch and bound.
STAGES = tuple(unsafe_bounds.STAGES) + (bab_stage.STAGE,)
DEFAULT_STAGES = unsafe_bounds.DEFAULT_STAGES + (bab_stage.STAGE,)


@dataclasses.dataclass
class Clock:
  """Seconds spent preparing and verifying an instance, against a timeout."""

  timeout: float
  prepare: float = 0.0
  verify: float = 0.0

  def expired(self) -> bool:
    return self.verify >= self.timeout


class InstanceResult(NamedTuple):
  """The outcome of one instance.

  Attributes:
    onnx_path: the network.
    vnnlib_path: the property.
    result: `SAT`, `UNSAT`, `TIMEOUT`, `UNKNOWN` or `ERROR`.
    counterexample: the `falsify.Counterexample` when sat, else None.
    decided_by: "pgd" or "bab" for sat, the costliest stage needed for
      unsat, else "".
    prepare_seconds: loading, parsing and compiling.
    verify_seconds: running the search and the bounds.
    timeout: the instance's time limit in seconds.
    message: the error for `ERROR`; why branch and bound was skipped for
      an undecided instance; else "".
  """

  onnx_path: str
  vnnlib_path: str
  result: str
  counterexample: falsify.Counterexample | None
  decided_by: str
  prepare_seconds: float
  verify_seconds: float
  timeout: float
  message: str = ""


def _decide(
  network, prop: VnnlibProperty, clock, stages, alpha_steps, attack, bab
):
  """(result, counterexample, decided_by, message) for a parsed property."""
  for region in prop.regions:
    if clock.expired():
      return TIMEOUT, None, "", ""
    found = falsify.find_counterexample(network, region, clock, attack)
    if found is not None:
      return SAT, found, "pgd", ""
  bound_stages = tuple(s for s in stages if s in unsafe_bounds.STAGES)
  used = set()
  for region in prop.regions:
    proof = unsafe_bounds.prove_region(
      network, region, clock, bound_stages, alpha_steps
    )
    used.update(proof.proved_by)
    if proof.proven.all():
      continue
    open_disjuncts = np.flatnonzero(~proof.proven)
    has_rows = all(len(region.disjuncts[i].offsets) for i in open_disjuncts)
    if bab_stage.STAGE not in stages or clock.expired() or not has_rows:
      return (TIMEOUT if clock.expired() else UNKNOWN), None, "", ""
    outcome = bab_stage.decide_region(
      network, region, open_disjuncts, clock, bab
    )
    if outcome.status == FALSIFIED:
      return SAT, outcome.counterexample, bab_stage.STAGE, ""
    if outcome.status != VERIFIED:
      out_of_time = outcome.out_of_time or clock.expired()
      message = (
        f"branch and bound skipped: {outcome.skipped}"
        if outcome.skipped
        else ""
      )
      return (TIMEOUT if out_of_time else UNKNOWN), None, "", message
    used.add(bab_stage.STAGE)
  needed = [s for s in stages if s in used]  # the costliest stage needed
  return UNSAT, None, needed[-1] if needed else "empty box", ""


def verify_instance(
  onnx_path: str,
  vnnlib_path: str,
  timeout: float,
  *,
  network: LoadedNetwork | None = None,
  stages: Sequence[str] = DEFAULT_STAGES,
  alpha_steps: int = DEFAULT_STEPS,
  attack: falsify.AttackSettings = falsify.AttackSettings(),
  bab: BaBSettings = BaBSettings(candidate_steps=10),
) -> InstanceResult:
  """Verifies ``vnnlib_path`` on ``onnx_path`` (see the module docstring).

  Args:
    onnx_path: the network (``.onnx`` or ``.onnx.gz``).
    vnnlib_path: the property (``.vnnlib`` or ``.vnnlib.gz``).
    timeout: seconds of verification allowed.
    network: the network already loaded from ``onnx_path`` (its load time is
      then not counted again), or None to load it.
    stages: stages, in order (`STAGES`: the bound stages, then "bab").
    alpha_steps: α-CROWN's optimization steps.
    attack: the counterexample search's budget.
    bab: branch and bound's settings (its ``seconds`` unused: the search
      runs for the time the instance has left).

  Returns:
    The `InstanceResult`.

  Raises:
    UnsupportedOnnxError, VnnlibError, ShapeMismatchError: the network or
      the property cannot be verified here.
    ValueError: a stage name not in `STAGES`.
  """
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}.")
  clock = Clock(float(timeout))
  if network is None:
    network = load_network(onnx_path)
    clock.prepare += network.load_seconds
  start = time.perf_counter()
  prop = read_vnnlib(vnnlib_path)
  network.check_sizes(prop.num_inputs, prop.num_outputs)
  clock.prepare += time.perf_counter() - start
  result, found, decided_by, message = _decide(
    network, prop, clock, tuple(stages), alpha_steps, attack, bab
  )
  return InstanceResult(
    onnx_path,
    vnnlib_path,
    result,
    found,
    decided_by,
    clock.prepare,
    clock.verify,
    float(timeout),
    message,
  )


def error_result(onnx_path, vnnlib_path, timeout, error: Exception):
  """An `ERROR` result carrying the exception's message."""
  return InstanceResult(
    onnx_path,
    vnnlib_path,
    ERROR,
    None,
    "",
    0.0,
    0.0,
    float(timeout),
    f"{type(error).__name__}: {error}",
  )
