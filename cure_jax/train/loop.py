"""`train_and_evaluate(config, workdir)`: train, checkpoint, evaluate.

The loop is thin: batches are pure functions of (seed, step), the step is one
jitted pure function over the device mesh, and everything that changes lives
in the checkpointed `TrainState`. So a run resumes exactly where it stopped —
after a crash, a SIGKILL or a preemption (SIGTERM, or Ctrl-C: checkpoint,
then exit; a second Ctrl-C interrupts at once) — and the same config runs on
one CPU or a pod.

Watching a run: the workdir holds ``config.json`` and ``run.json`` (what
runs, on what; `cure_jax.workdir`) from the start, a progress bar on stderr
gives the phase and an ETA that prices each phase at its own cost, and the
metrics go through absl logging (``--workdir``/train.log from
``cure_jax.main``). Checkpoints are written every ``checkpoint_every_steps``
steps and every ``checkpoint_every_minutes`` minutes of wall time.
"""

import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from cure_jax import config_schema, data
from cure_jax import workdir as workdir_lib
from cure_jax.checkpoint import (
  Checkpointer,
  NoCheckpointError,
  checkpoint_dir,
  restore_variables,
)
from cure_jax.models import build_model
from cure_jax.objectives.base import Batch
from cure_jax.parallel import distributed
from cure_jax.parallel import mesh as mesh_lib
from cure_jax.parallel.precision import training_model
from cure_jax.train import final_eval
from cure_jax.train.checkpoint_timer import CheckpointTimer
from cure_jax.train.preemption import PreemptionGuard
from cure_jax.train.progress import PhaseProgress, PhaseSpan, output_above_bars
from cure_jax.train.reporting import MetricWriter, write_json_atomic
from cure_jax.train.state import (
  TrainState,
  create_train_state,
  fresh_state,
  make_optimizer,
)
from cure_jax.train.step import (
  is_gp_boundary,
  make_gp_boundary,
  make_gp_restart,
  make_schedules,
  make_train_step,
  phase_at,
)

RESULTS_FILE = "results.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def _template(config, model, optimizer, info) -> TrainState:
  return create_train_state(config, model, optimizer, info.input_shape)


def _pretrained(config, model, optimizer, info) -> TrainState:
  """The l∞ model CURE-Finetune starts from (``config.finetune_from``)."""
  source = config.finetune_from
  template = _template(config, model, optimizer, info)
  try:
    variables = restore_variables(
      checkpoint_dir(source),
      {"params": template.params, "batch_stats": template.batch_stats},
    )
  except NoCheckpointError as error:
    raise FileNotFoundError(
      f"finetune_from={source!r} holds no checkpoint under "
      f"{checkpoint_dir(source)}; train the l∞ model there first (e.g. "
      "method=sabr)."
    ) from error
  return fresh_state(
    config, variables["params"], variables["batch_stats"], optimizer
  )


def _check_finite(metrics: dict[str, Any], step: int, ckpt: Checkpointer):
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    last = ckpt.latest_step
    kept = (
      f"the last good checkpoint (step {last}) in {ckpt.directory} is "
      "kept and the run resumes from it"
      if last is not None
      else "no checkpoint was written"
    )
    raise NonFiniteLossError(
      f"the loss is {loss} at step {step}; {kept}. Lower the learning rate "
      "(--config.learning_rate), tighten gradient clipping "
      "(--config.grad_clip_norm) or check the data, then restart."
    )


def phase_spans(sched, total_steps: int) -> list[PhaseSpan]:
  """The natural, ε-ramp and robust stretches of ``total_steps`` steps.

  Natural: κ = 1 (clean CE only); ramp: from there to the ramp's end;
  robust: the rest (`step.phase_at`). Empty stretches are kept, empty.
  """
  natural = min(sched.natural_end, total_steps)
  ramp = max(natural, min(sched.ramp_end, total_steps))
  return [
    PhaseSpan("natural", 0, natural),
    PhaseSpan("ramp", natural, ramp),
    PhaseSpan("robust", ramp, total_steps),
  ]


def phase_cost_hint(config) -> dict[str, float]:
  """Seconds per step of each phase relative to a natural step.

  From `config_schema.TrainingMethod.step_cost` for the model (the small
  CNN's figure for models it does not list), so that the ETA is sensible
  before a phase has run.
  """
  models = config_schema.STEP_COST_MODELS
  index = models.index(config.model.name) if config.model.name in models else 0
  cost = config_schema.check_method(config.method).step_cost[index]
  return {"natural": 1.0, "ramp": cost, "robust": cost}


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  stop_after_steps: int | None = None,
) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming if possible) and evaluates.

  Args:
    config: a config from ``configs/`` (see `cure_jax.config_schema`).
    workdir: ``config.json`` and ``run.json`` (process 0, at the start),
      checkpoints, TensorBoard summaries and ``results.json`` go here.
    stop_after_steps: stop (with a checkpoint) after this many steps of this
      call, as a preemption would; for tests and debugging.

  Returns:
    The final evaluation with the config and its provenance (also written to
    ``workdir/results.json``), or ``{"stopped_at_step": step}`` when the run
    stopped early (``stop_after_steps``, SIGTERM or SIGINT) after saving a
    checkpoint.

  Raises:
    DataNotFoundError: the dataset is missing (see `load_datasets`).
    CheckpointRestoreError: the newest checkpoint in ``workdir`` is corrupt
      or belongs to another model; the run never silently starts over.
    NonFiniteLossError: the loss diverged; the last good checkpoint is kept.
  """
  config_schema.check_method(config.method)
  main = distributed.is_main_process()
  os.makedirs(workdir, exist_ok=True)
  info, train, test = data.load_datasets(config)
  # What produced the run, taken now: the checkout may change while it runs.
  described = workdir_lib.describe(config)
  if main:
    workdir_lib.write_run_record(workdir, config)
  mesh = mesh_lib.make_mesh()
  steps_per_epoch = data.steps_per_epoch(train.num_examples, config.batch_size)
  total_steps = int(round(config.num_epochs * steps_per_epoch))

  model = build_model(config)
  optimizer = make_optimizer(config, steps_per_epoch)
  sched = make_schedules(config, steps_per_epoch)
  gp_interval = config.cure.gp_interval_steps or steps_per_epoch

  writer = MetricWriter(os.path.join(workdir, "tensorboard"), enabled=main)
  try:  # Closing waits for pending asynchronous saves, also on errors.
    with Checkpointer(
      checkpoint_dir(workdir),
      max_to_keep=config.keep_checkpoints,
      save_interval_steps=config.checkpoint_every_steps,
    ) as ckpt:
      state = (
        _pretrained(config, model, optimizer, info)
        if config.finetune_from
        else _template(config, model, optimizer, info)
      )
      restored = ckpt.restore_latest(state)
      state = mesh_lib.replicate(state if restored is None else restored, mesh)
      first_step = int(state.step)

      replicated = mesh_lib.replicated_sharding(mesh)
      compiled_steps = {}

      def train_step_of(phase):  # one compilation per phase of training
        if phase not in compiled_steps:
          compiled_steps[phase] = jax.jit(
            make_train_step(
              config,
              training_model(model, config.mixed_precision),
              optimizer,
              sched,
              phase,
            ),
            in_shardings=(replicated, mesh_lib.data_sharding(mesh)),
            out_shardings=(replicated, replicated),
            donate_argnums=0,
          )
        return compiled_steps[phase]

      gp_boundary = jax.jit(make_gp_boundary(config), donate_argnums=0)
      gp_restart = jax.jit(make_gp_restart(), donate_argnums=0)

      if main:
        logging.info(
          "%s on %s: %d steps (%d/epoch) from step %d, %d device(s), %d "
          "process(es)",
          config.method,
          info.name,
          total_steps,
          steps_per_epoch,
          first_step,
          len(jax.devices()),
          jax.process_count(),
        )
      timer = CheckpointTimer(config.checkpoint_every_minutes)
      start_time = time.monotonic()
      stop_at = (
        total_steps
        if stop_after_steps is None
        else min(total_steps, first_step + stop_after_steps)
      )
      with (
        PreemptionGuard(STOP_SIGNALS) as guard,
        output_above_bars() as stderr,
      ):
        progress = PhaseProgress(
          phase_spans(sched, total_steps),
          first_step,
          phase_cost_hint(config),
          enabled=main,
          stream=stderr,
        )
        for step in range(first_step, stop_at):
          if config.cure.gp_beta > 0 and step == sched.ramp_end:
            state = gp_restart(state)
          elif is_gp_boundary(config, sched, step, gp_interval):
            state = gp_boundary(state)
          local = data.train_batch(
            train,
            step,
            global_batch_size=config.batch_size,
            seed=config.seed,
            augmentation=info.train_augmentation,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
          )
          batch = mesh_lib.shard_global_batch(
            Batch(local.images, local.labels), mesh
          )
          state, metrics = train_step_of(phase_at(config, sched, step))(
            state, batch
          )
          done = step + 1
          progress.update(done)
          log_now = done % config.log_every_steps == 0 or done == total_steps
          by_time = log_now and timer.due()  # the same steps on every process
          save_now = done % config.checkpoint_every_steps == 0 or by_time
          if log_now or save_now:
            metrics = jax.device_get(metrics)
            _check_finite(metrics, done, ckpt)
          if log_now:
            writer.write_scalars(done, metrics)
          if save_now and ckpt.save(done, state, force=by_time):
            timer.restart()
          if guard.should_stop(done) or done == stop_at < total_steps:
            _check_finite(jax.device_get(metrics), done, ckpt)
            ckpt.save(done, state, force=True)
            progress.close()
            if guard.signal_received is not None and main:
              logging.warning(
                "Stopped on %s at step %d with a checkpoint in %s; run the "
                "same command again to resume.",
                guard.signal_received.name,
                done,
                ckpt.directory,
              )
            return {"stopped_at_step": done}
        progress.close()
      train_seconds = time.monotonic() - start_time
      if int(state.step) == total_steps and ckpt.latest_step != total_steps:
        ckpt.save(total_steps, state, force=True)

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    results = final_eval.evaluate_model(
      config,
      model,
      variables,
      test,
      info,
      log=logging.info if main else (lambda *_: None),
      progress_bar=main,
    )
    # One compilation per phase, none after a phase's first step.
    compilations = sum(fn._cache_size() for fn in compiled_steps.values())  # pylint: disable=protected-access
    results.update(
      method=config.method,
      dataset=info.name,
      steps=total_steps,
      train_seconds_this_run=train_seconds,
      resumed_from_step=first_step,
      train_phases_this_run=len(compiled_steps),
      train_step_compilations_this_run=compilations,
      **described,
    )
    if main:
      writer.write_scalars(
        total_steps,
        {
          f"final/{k}": v
          for k, v in results.items()
          if isinstance(v, (int, float))
        },
      )
      write_json_atomic(os.path.join(workdir, RESULTS_FILE), results)
    return results
  finally:
    writer.close()
