"""Tests for cure_jax.train.preemption."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from test_train_loop import tiny_config  # pylint: disable=g-bad-import-order

from cure_jax import data
from cure_jax.checkpoint import Checkpointer, checkpoint_dir
from cure_jax.data import fake_sources
from cure_jax.train import loop, preemption
from cure_jax.train.preemption import PreemptionGuard


class RecordingHandler:
  """A Python signal handler that records the signals it receives."""

  def __init__(self):
    self.received = []

  def __call__(self, signum, frame):
    del frame
    self.received.append(signum)


@pytest.fixture
def recorder():
  """Installs a recording SIGTERM/SIGUSR1 handler; restores the originals."""
  handler = RecordingHandler()
  originals = {
    s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGUSR1)
  }
  yield handler
  for sig, original in originals.items():
    signal.signal(sig, original)


def test_sigterm_sets_flag_and_previous_handler_is_restored(recorder):
  with PreemptionGuard() as guard:
    assert guard.handled_signals == (signal.SIGTERM,)
    assert signal.getsignal(signal.SIGTERM) != recorder
    assert not guard.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.signal_received == signal.SIGTERM
    assert guard.should_stop(2)
    assert guard.should_stop(3) and guard.stop_requested  # Latched.
  assert signal.getsignal(signal.SIGTERM) is recorder
  assert not recorder.received  # The first signal was only recorded.


def test_previous_handler_is_restored_after_an_exception(recorder):
  with pytest.raises(ZeroDivisionError):
    with PreemptionGuard((signal.SIGTERM, signal.SIGUSR1)):
      _ = 1 / 0
  assert signal.getsignal(signal.SIGTERM) is recorder
  assert signal.getsignal(signal.SIGUSR1) is recorder


def test_repeated_signal_is_passed_to_the_previous_handler(recorder):
  with PreemptionGuard((signal.SIGUSR1,)) as guard:
    os.kill(os.getpid(), signal.SIGUSR1)
    assert not recorder.received
    os.kill(os.getpid(), signal.SIGUSR1)
    assert recorder.received == [signal.SIGUSR1]
    assert guard.signal_received == signal.SIGUSR1


def test_sigint_is_optional_and_twice_still_interrupts():
  # Python's own handler, even where the test runner was started with SIGINT
  # ignored (nohup, a background job), to which the guard would pass it on.
  outer = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    previous = signal.getsignal(signal.SIGINT)
    with PreemptionGuard() as guard:
      assert signal.getsignal(signal.SIGINT) is previous  # Not handled.
    with PreemptionGuard((signal.SIGTERM, signal.SIGINT)) as guard:
      os.kill(os.getpid(), signal.SIGINT)  # No KeyboardInterrupt: a clean stop.
      assert guard.signal_received == signal.SIGINT
      assert guard.should_stop(1)
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous
  finally:
    signal.signal(signal.SIGINT, outer)


def test_ctrl_c_during_training_checkpoints_and_returns(
  tmp_path, monkeypatch, caplog
):
  """SIGINT, like SIGTERM, stops training at the next step with a checkpoint."""
  for var in ("CURE_DATA_DIR", "CURE_MNIST_DIR", "TFDS_DATA_DIR"):
    monkeypatch.delenv(var, raising=False)
  files = tmp_path / "files"
  fake_sources.write_fake_mnist(files, num_train=48, num_test=4, seed=3)
  outer = signal.signal(signal.SIGINT, signal.default_int_handler)
  train_batch = data.train_batch

  def batch_then_ctrl_c(split, step, **kwargs):
    if step == 3:  # the first step of the ε ramp
      os.kill(os.getpid(), signal.SIGINT)
    return train_batch(split, step, **kwargs)

  monkeypatch.setattr(data, "train_batch", batch_then_ctrl_c)
  caplog.set_level("INFO", logger="absl")
  try:
    config = tiny_config(files, tmp_path / "tfds", method="natural")
    result = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, outer)
  assert result == {"stopped_at_step": 4}
  assert "Stopped on SIGINT at step 4" in caplog.text
  with Checkpointer(checkpoint_dir(str(tmp_path / "run"))) as ckpt:
    # Step 3 by the step interval (time-based saves: every 10 minutes, not
    # due), step 4 for the stop.
    assert ckpt.all_steps == (3, 4)
  assert not (tmp_path / "run" / loop.RESULTS_FILE).exists()


def test_guard_can_be_reused_and_not_nested(recorder):
  guard = PreemptionGuard()
  with guard:
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(RuntimeError, match="already active"):
      guard.__enter__()
  with guard:  # A fresh start.
    assert guard.signal_received is None and not guard.should_stop(1)
  assert signal.getsignal(signal.SIGTERM) is recorder


def test_bad_arguments_and_threads_raise_helpful_errors():
  with pytest.raises(ValueError, match="SIGKILL cannot be caught"):
    PreemptionGuard((signal.SIGKILL,))
  with pytest.raises(ValueError, match="not a signal number"):
    PreemptionGuard((12345,))
  with pytest.raises(ValueError, match="at least one signal"):
    PreemptionGuard(())
  with pytest.raises(ValueError, match="sync_every_steps"):
    PreemptionGuard(sync_every_steps=0)
  errors = []

  def enter_in_thread():
    try:
      with PreemptionGuard():
        pass
    except RuntimeError as error:
      errors.append(str(error))

  thread = threading.Thread(target=enter_in_thread)
  thread.start()
  thread.join()
  assert len(errors) == 1 and "main thread" in errors[0]


def test_processes_agree_on_local_signals_every_sync_steps(
  monkeypatch, recorder
):
  """With 2 processes, a flag raised on either stops both at one step."""
  del recorder
  gathered_at = []
  remote_flag = {"value": 0}

  def fake_allgather(local_flag):
    gathered_at.append(current_step["value"])
    return np.array([int(local_flag), remote_flag["value"]], np.int32)

  current_step = {"value": 0}
  monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
  monkeypatch.setattr(
    preemption.multihost_utils, "process_allgather", fake_allgather
  )
  with PreemptionGuard(sync_every_steps=3) as guard:
    decisions = []
    for step in range(1, 10):
      current_step["value"] = step
      if step == 4:
        remote_flag["value"] = 1  # The other process got SIGTERM.
      decisions.append(guard.should_stop(step))
  assert gathered_at == [3, 6]  # Only multiples of 3, none once decided.
  assert decisions == [False] * 5 + [True] * 4
  assert guard.signal_received is None  # This process saw no signal.


def test_sigterm_is_left_to_jax_preemption_service(monkeypatch, recorder):
  monkeypatch.setattr(preemption, "jax_preemption_service_active", lambda: True)
  monkeypatch.setattr(
    preemption.multihost_utils,
    "reached_preemption_sync_point",
    lambda step: step == 7,
  )
  with PreemptionGuard() as guard:
    assert guard.handled_signals == ()  # JAX's C handler keeps SIGTERM.
    assert signal.getsignal(signal.SIGTERM) is recorder
    assert [guard.should_stop(s) for s in range(5, 10)] == [
      False,
      False,
      True,
      True,
      True,
    ]


_WORKER = textwrap.dedent("""
    import os, signal, sys, time
    import jax
    process_id, port = int(sys.argv[1]), sys.argv[2]
    jax.distributed.initialize(f'localhost:{port}', num_processes=2,
                               process_id=process_id,
                               initialization_timeout=60)
    from cure_jax.train.preemption import PreemptionGuard

    def run_until_stopped(sig):
      with PreemptionGuard((sig,), sync_every_steps=2) as guard:
        for step in range(1, 100_000):
          if process_id == 1 and step == 10:
            os.kill(os.getpid(), sig)
          time.sleep(0.001 * (1 + process_id))  # Processes run out of step.
          if guard.should_stop(step):
            return step

    # SIGUSR1: our handler + all-gather; SIGTERM: JAX's preemption service.
    for sig in (signal.SIGUSR1, signal.SIGTERM):
      print(sig.name, 'STOPPED AT', run_until_stopped(sig), flush=True)
""")


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def test_two_processes_stop_at_the_same_step():
  """Real 2-process CPU job: one process is signalled, both stop together."""
  port = str(_free_port())
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  workers = [
    subprocess.Popen(
      [sys.executable, "-c", _WORKER, str(i), port],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [w.communicate(timeout=120) for w in workers]
  for worker, (_, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-3000:]
  stops = [
    dict(
      line.split(" STOPPED AT ")
      for line in out.splitlines()
      if " STOPPED AT " in line
    )
    for out, _ in outputs
  ]
  assert stops[0] == stops[1], stops
  # All-gathers run at even steps: the first one after the signal at 10.
  assert stops[0]["SIGUSR1"] == "10"
  assert int(stops[0]["SIGTERM"]) >= 10
