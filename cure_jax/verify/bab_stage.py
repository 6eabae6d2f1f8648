"""The verify command's last stage: β-CROWN branch and bound over a box.

The disjuncts of a region that the bound stages leave open go to
`certify.bab_search` with the region's box (rounded outward to float32) as
the input set and their rows as the unsafe specification; it runs for the
instance's remaining verification time. A point it returns is a
counterexample only after it is moved into the box rounded inward (so it
lies in the declared box, checked in float64) and a plain forward pass of the
JAX function (and onnxruntime, where installed) satisfies every row of one
disjunct (`falsify.confirm`).

Branch and bound needs a ReLU chain (`bounds.splits.relu_chain`); for any
other network the stage is skipped and says why.
"""

import logging
import time
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from cure_jax.bounds import splits
from cure_jax.bounds.graph import UnsupportedPrimitiveError
from cure_jax.certify import bab_search, memory_budget
from cure_jax.interchange.vnnlib import InputRegion, float32_box
from cure_jax.parallel.precision import cast_floating
from cure_jax.verify import falsify

STAGE = "bab"
_log = logging.getLogger(__name__)


class BabOutcome(NamedTuple):
  """What the stage decided for a region's open disjuncts.

  Attributes:
    status: `bab_search.VERIFIED`, `FALSIFIED` or `UNKNOWN`.
    counterexample: the confirmed `falsify.Counterexample` when falsified.
    skipped: why the stage did not run ("" when it ran).
    out_of_time: the search stopped at the time limit.
  """

  status: str
  counterexample: falsify.Counterexample | None
  skipped: str = ""
  out_of_time: bool = False


def network_verifier(network, settings: bab_search.BaBSettings):
  """The network's `bab_search.Verifier` (built once per network and
  settings, kept in ``network.compiled``), or the reason it has none.

  Returns:
    (verifier or None, reason, seconds spent extracting the chain).
  """
  key = ("bab_verifier", settings._replace(seconds=0.0))
  start = time.perf_counter()
  if key not in network.compiled:
    params = cast_floating(network.params, jnp.float32)
    try:
      chain = splits.relu_chain(
        lambda x: network.apply_fn(params, x).reshape(1, -1),
        jnp.zeros(network.input_shape, jnp.float32),
      )
      network.compiled[key] = (
        bab_search.Verifier(chain, bab_search.BOX, settings),
        "",
      )
    except (UnsupportedPrimitiveError, ValueError) as error:
      network.compiled[key] = (None, f"{type(error).__name__}: {error}")
  verifier, reason = network.compiled[key]
  return verifier, reason, time.perf_counter() - start


def region_spec(region: InputRegion, disjuncts) -> bab_search.DisjunctiveSpec:
  """The rows of the chosen disjuncts (each with a row), numbered 0, 1, …"""
  chosen = [region.disjuncts[i] for i in disjuncts]
  return bab_search.disjunctive_spec(
    np.concatenate([d.coeffs for d in chosen]),
    np.concatenate([d.offsets for d in chosen]),
    np.concatenate([np.full(len(d.offsets), i) for i, d in enumerate(chosen)]),
  )


def _confirmer(network, region: InputRegion, disjuncts, found: list):
  """``confirm(flat x)`` for the search; stores the counterexample."""
  inner_lo, inner_hi = float32_box(region.lower, region.upper, outward=False)

  def confirm(x) -> bool:
    x = np.clip(np.asarray(x, np.float32).reshape(-1), inner_lo, inner_hi)
    wide = x.astype(np.float64)
    if np.any(wide < region.lower) or np.any(wide > region.upper):
      return False
    for index in disjuncts:
      outputs = falsify.confirm(network, region.disjuncts[index], x)
      if outputs is not None:
        found.append(falsify.Counterexample(x, outputs, index))
        return True
    return False

  return confirm


def decide_region(
  network,
  region: InputRegion,
  disjuncts,
  clock,
  settings: bab_search.BaBSettings = bab_search.BaBSettings(candidate_steps=10),
) -> BabOutcome:
  """Branch and bound of a region's open ``disjuncts`` (indices, each with
  at least one row) for the time ``clock`` has left.

  Compilation and chain extraction count as preparation, the search as
  verification (``clock.prepare``, ``clock.verify``).
  """
  verifier, reason, seconds = network_verifier(network, settings)
  clock.prepare += seconds
  if verifier is None:
    _log.info("branch and bound skipped for %s: %s", network.path, reason)
    return BabOutcome(bab_search.UNKNOWN, None, reason)
  lower, upper = float32_box(region.lower, region.upper, outward=True)
  found: list = []
  compiled_before = verifier.compile_seconds
  try:
    result = bab_search.search(
      verifier,
      bab_search.box_set(lower, upper),
      region_spec(region, disjuncts),
      _confirmer(network, region, disjuncts, found),
      seconds=max(clock.timeout - clock.verify, 0.0),
    )
  except memory_budget.MemoryBudgetError as error:
    clock.prepare += verifier.compile_seconds - compiled_before
    _log.info("branch and bound skipped for %s: %s", network.path, error)
    return BabOutcome(bab_search.UNKNOWN, None, f"MemoryBudgetError: {error}")
  clock.prepare += verifier.compile_seconds - compiled_before
  clock.verify += result.seconds
  if result.status == bab_search.FALSIFIED:
    return BabOutcome(result.status, found[-1])
  return BabOutcome(result.status, None, out_of_time=result.out_of_time)
