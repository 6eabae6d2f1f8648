"""A progress bar whose ETA knows that training's phases differ in cost.

Natural, ε-ramp and robust steps can differ twelvefold in cost, so an ETA that
averages over all steps so far is far too low while the natural epochs run.
`PhaseProgress` keeps seconds per step for each phase it has seen and prices
the remaining steps of a phase at that phase's rate; a phase not yet seen is
priced from the last rate seen and the phase's relative cost hint.
"""

import contextlib
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple, TextIO

import tqdm
import tqdm.contrib
from absl import logging


class PhaseSpan(NamedTuple):
  """Steps [start, end) of one named phase of training."""

  name: str
  start: int
  end: int


def _format_seconds(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def remaining_seconds(
  spans: Sequence[PhaseSpan],
  step: int,
  seconds_per_step: Mapping[str, float],
  cost_hint: Mapping[str, float],
) -> float:
  """Seconds left after ``step``: Σ_phases (steps left in it) · (its s/step).

  A phase with no measured rate costs (last measured rate) · hint[phase] /
  hint[last measured phase]; with no rate measured at all the result is nan.
  """
  measured = [s for s in spans if s.name in seconds_per_step]
  if not measured:
    return float("nan")
  anchor = measured[-1].name
  total = 0.0
  for span in spans:
    left = max(0, span.end - max(step, span.start))
    if not left:
      continue
    rate = seconds_per_step.get(span.name)
    if rate is None:
      ratio = cost_hint.get(span.name, 1.0) / cost_hint.get(anchor, 1.0)
      rate = seconds_per_step[anchor] * ratio
    total += left * rate
  return total


class PhaseProgress:
  """A tqdm bar over training steps with a per-phase ETA."""

  def __init__(
    self,
    spans: Sequence[PhaseSpan],
    first_step: int,
    cost_hint: Mapping[str, float] | None = None,
    enabled: bool = True,
    stream=sys.stderr,
  ):
    self._spans = [s for s in spans if s.end > s.start]
    self._cost_hint = dict(cost_hint or {})
    self._seconds: dict[str, float] = {}
    self._steps: dict[str, int] = {}
    self._last_step, self._last_time = first_step, time.monotonic()
    total = max((s.end for s in self._spans), default=first_step)
    self._bar = tqdm.tqdm(
      total=total,
      initial=first_step,
      file=stream,
      disable=not enabled,
      dynamic_ncols=True,
      bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
    )

  def phase_of(self, step: int) -> str:
    for span in self._spans:
      if span.start <= step < span.end:
        return span.name
    return self._spans[-1].name if self._spans else ""

  def seconds_per_step(self) -> dict[str, float]:
    return {k: self._seconds[k] / self._steps[k] for k in self._steps}

  def update(self, step: int) -> str:
    """Records the steps since the last call (all in the phase of step − 1).

    Cheap enough for every step: the bar redraws at most every 0.1 s.
    """
    now = time.monotonic()
    done = step - self._last_step
    if done > 0:
      phase = self.phase_of(step - 1)
      self._seconds[phase] = (
        self._seconds.get(phase, 0.0) + now - self._last_time
      )
      self._steps[phase] = self._steps.get(phase, 0) + done
    self._last_step, self._last_time = step, now
    eta = remaining_seconds(
      self._spans, step, self.seconds_per_step(), self._cost_hint
    )
    text = f"{self.phase_of(step)}, ETA {_format_seconds(eta)}"
    self._bar.set_postfix_str(text, refresh=False)
    if done > 0:
      self._bar.update(done)  # redraws, with the text, when it is time to
    return text

  def close(self) -> None:
    self._bar.close()


@contextlib.contextmanager
def output_above_bars() -> Iterator[TextIO]:
  """Routes ``sys.stderr`` writes and absl log lines above the open tqdm bars.

  Yields:
    The real stderr, for the bars themselves to write to.
  """
  original = sys.stderr
  sys.stderr = tqdm.contrib.DummyTqdmFile(original)
  absl_handler = logging.get_absl_handler().python_handler
  swapped = absl_handler.stream is original
  if swapped:  # it holds the stream it was made with
    absl_handler.setStream(sys.stderr)
  try:
    yield original
  finally:
    if swapped:
      absl_handler.setStream(original)
    sys.stderr = original
