"""`train_and_evaluate(config, workdir)`: train, checkpoint, evaluate.

The loop is thin: batches are pure functions of (seed, step), the step is one
jitted pure function over the device mesh, and everything that changes lives
in the checkpointed `TrainState`. So a run resumes exactly where it stopped —
after a crash, a SIGKILL or a preemption (SIGTERM: checkpoint, then exit) —
and the same config runs on one CPU or a pod.
"""

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from cure_jax import config_schema, data
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
from cure_jax.train.preemption import PreemptionGuard
from cure_jax.train.reporting import MetricWriter, Progress, write_json_atomic
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


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  stop_after_steps: int | None = None,
) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming if possible) and evaluates.

  Args:
    config: a config from ``configs/`` (see `cure_jax.config_schema`).
    workdir: checkpoints, TensorBoard summaries and ``results.json`` go here.
    stop_after_steps: stop (with a checkpoint) after this many steps of this
      call, as a preemption would; for tests and debugging.

  Returns:
    The final evaluation (also written to ``workdir/results.json``), or
    ``{"stopped_at_step": step}`` when the run stopped early.

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

      progress = Progress(total_steps, first_step, enabled=main)
      if main:
        print(
          f"{config.method} on {info.name}: {total_steps} steps "
          f"({steps_per_epoch}/epoch) from step {first_step}, "
          f"{len(jax.devices())} device(s), {jax.process_count()} "
          "process(es)",
          flush=True,
        )
      start_time = time.monotonic()
      stop_at = (
        total_steps
        if stop_after_steps is None
        else min(total_steps, first_step + stop_after_steps)
      )
      with PreemptionGuard() as guard:
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
          log_now = done % config.log_every_steps == 0 or done == total_steps
          save_now = done % config.checkpoint_every_steps == 0
          if log_now or save_now:
            metrics = jax.device_get(metrics)
            _check_finite(metrics, done, ckpt)
          if log_now:
            writer.write_scalars(done, metrics)
            progress.update(done)
          if save_now:
            ckpt.save(done, state)
          if guard.should_stop(done) or done == stop_at < total_steps:
            _check_finite(jax.device_get(metrics), done, ckpt)
            ckpt.save(done, state, force=True)
            return {"stopped_at_step": done}
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
      log=print if main else (lambda *_: None),
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
