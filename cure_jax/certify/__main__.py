r"""Certifies a trained checkpoint: per-sample l∞ / l2 / l1 flags and PGD.

  python -m cure_jax.certify --workdir=/tmp/mnist_cure_max \
      [--config.eval.certify_examples=1000]

Restores the newest checkpoint in ``workdir`` with the config the run
recorded there (``config.json``; ``--config=...`` instead names one, for runs
that recorded none), takes the first ``config.eval.certify_examples`` test points (the
paper's 1000), certifies each at the setting's radii (``config.eval.eps_*``
for ``config.eval.norms``) by the cascade ``config.eval.methods`` (IBP →
CROWN → α-CROWN, stopping at the first stage that certifies; each stage in
chunks that fit ``config.eval.memory_budget_gb``; then, when
``config.eval.bab_seconds`` > 0, branch and bound on the rest), attacks each
with PGD (``config.eval.pgd_steps`` × ``pgd_restarts``, margin loss) for
the empirical upper bound (random starts from ``config.seed``; first, so
that no stage bounds a point the attack broke: ``config.eval.attack_first``),
and writes ``workdir/certify.csv`` (one row per point) and ``workdir/certify.json`` (the
summary, with seconds per point per stage, the config and what produced it:
`workdir.provenance`), printing the table; progress goes to stderr (a bar)
and ``workdir/certify.log``. Always in float32, whatever the training
precision.

By default it also searches every point's largest certified and PGD radius
(`certify.radii`: bisection up to twice the setting's radius,
``--radius_search_steps`` halvings, the cheap stages
``--radius_search_methods`` of the cascade) and keeps its margin lower bound:
the accuracy-against-ε curves of ``python -m cure_jax.plot WORKDIR``. That
about doubles the time; ``--radius_search_examples=N`` searches the first N
points only, ``--radius_search_methods=`` (empty) with the whole cascade
(slower: ~6× the certification with 6 steps), and ``--noradius_search``
certifies at the setting's radii only.
"""

import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from cure_jax import cli, host_memory, log_setup

# The radius search's defaults: every point, 4 bisection steps, the cheap
# stages. About as long again as the certification itself, where the whole
# cascade with 6 steps takes ~6× as long (docs/performance.md, "Radius
# search").
SEARCH_EXAMPLES = 0  # every point
SEARCH_STEPS = 4
SEARCH_METHODS = ("ibp", "crown_ibp")

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Training config of the checkpoint, e.g. "
  "configs/mnist.py:cpu=True,method=sabr (default: the one the run "
  "recorded in --workdir).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "The run's directory (checkpoints are read "
  "there, certify.csv/json written there).",
)
_OUTPUT_NAME = flags.DEFINE_string(
  "output_name", "certify", "File stem of the CSV and JSON reports."
)
_RADIUS_SEARCH = flags.DEFINE_bool(
  "radius_search",
  True,
  "Also find each point's largest certified and PGD radius (columns "
  "radius_certified_<norm>, radius_pgd_<norm>, margin_lower_<norm>): the "
  "curves of python -m cure_jax.plot. --noradius_search: the setting's "
  "radii only.",
)
_SEARCH_EXAMPLES = flags.DEFINE_integer(
  "radius_search_examples",
  SEARCH_EXAMPLES,
  "Search the radii of the first this many test points (0: every one "
  "certified); the others' radius columns hold NaN.",
  lower_bound=0,
)
_SEARCH_STEPS = flags.DEFINE_integer(
  "radius_search_steps",
  SEARCH_STEPS,
  "Bisection steps per radius: the result lies within 2·ε/2^steps below "
  "the cascade's largest certified radius (ε the setting's radius).",
  lower_bound=1,
)
_SEARCH_METHODS = flags.DEFINE_list(
  "radius_search_methods",
  list(SEARCH_METHODS),
  "The cascade of the radius search, cheapest first (empty: "
  "config.eval.methods). At the setting's radius the certificates are the "
  "full cascade's whatever this is.",
)
flags.mark_flags_as_required(["workdir"])

NORM_RADIUS_KEYS = {"linf": "eps_linf", "l2": "eps_l2", "l1": "eps_l1"}


def radius_search_settings(examples: int, steps: int, methods: Sequence[str]):
  """The `certify.RadiusSearch` of the command line's flags.

  Args:
    examples: the points searched first (0: all).
    steps: bisection steps; the relative tolerance is 2^-steps.
    methods: the search's cascade (empty: the evaluation's).
  """
  from cure_jax.certify import radii  # pylint: disable=g-import-not-at-top

  return radii.RadiusSearch(
    relative_tolerance=2.0**-steps,
    examples=examples or None,
    methods=tuple(methods) or None,
  )


def certify_checkpoint(
  config,
  workdir: str,
  output_name: str = "certify",
  log=print,
  radius_search=None,
  progress_bar: bool = False,
) -> dict[str, Any]:
  """Certifies the newest checkpoint of ``workdir``; returns the summary.

  Args:
    config: the config the checkpoint was trained with.
    workdir: the run's directory.
    output_name: file stem of the reports written into ``workdir``.
    log: progress and table output (None: silent).
    radius_search: a `certify.RadiusSearch` to add radius and margin columns,
      or None.
    progress_bar: show a progress bar on stderr (in place of progress
      lines).

  Returns:
    The summary (also in ``workdir/<output_name>.json``).

  Raises:
    NoCheckpointError: ``workdir`` has no checkpoint.
    CheckpointRestoreError: its checkpoint cannot be restored.
    DataNotFoundError: the test split is not available.
  """
  # Imported here so that --help answers without initializing JAX.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from cure_jax import certify, data  # pylint: disable=g-import-not-at-top
  from cure_jax import workdir as workdir_lib
  from cure_jax.checkpoint import restore_for_eval  # pylint: disable=g-import-not-at-top

  # What produced the report, taken now: the checkout may change meanwhile.
  described = workdir_lib.describe(config)
  model, variables = restore_for_eval(config, workdir)
  info = data.dataset_info(config.dataset.name)
  test = data.load_config_split(config, "test")
  if config.eval.certify_examples:
    test = test.take(min(config.eval.certify_examples, test.num_examples))
  images = data.to_unit_float(test.images)
  if info.eval_crop:
    images = data.center_crop(images, info.eval_crop)
  radii = {
    n: float(config.eval[NORM_RADIUS_KEYS[n]]) for n in config.eval.norms
  }
  pgd = certify.PGDSettings(
    steps=config.eval.pgd_steps, restarts=config.eval.pgd_restarts
  )
  records, summary = certify.evaluate(
    model.apply,
    variables,
    np.asarray(images),
    test.labels,
    radii=radii,
    num_classes=config.model.num_classes,
    batch_size=config.eval.certify_batch_size,
    methods=tuple(config.eval.methods),
    alpha_steps=config.eval.alpha_steps,
    pgd=pgd,
    key=jax.random.PRNGKey(config.seed),
    memory_budget_gb=config.eval.memory_budget_gb,
    bab_seconds=config.eval.bab_seconds,
    attack_first=config.eval.attack_first,
    log=log,
    keep_margins=radius_search is not None,
    radius_search=radius_search,
    progress_bar=progress_bar,
  )
  summary = dict(
    summary,
    method=config.method,
    dataset=info.name,
    workdir=os.path.abspath(workdir),
    **described,
  )
  certify.write_report(workdir, records, summary, name=output_name)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value
  log_setup.setup(workdir if os.path.isdir(workdir) else None, "certify")
  import jax  # pylint: disable=g-import-not-at-top

  from cure_jax.checkpoint import CheckpointRestoreError  # pylint: disable=g-import-not-at-top
  from cure_jax.data import DataNotFoundError  # pylint: disable=g-import-not-at-top

  # The run's recorded config, or --config's (cpu=auto resolved as in
  # training: the CPU variant without an accelerator).
  config = cli.run_config(flags.FLAGS["config"], workdir, jax.default_backend())
  main_process = jax.process_index() == 0
  logging.info(
    "certifying %s on %s: the newest checkpoint of %s",
    config.method,
    config.dataset.name,
    workdir,
  )
  try:
    certify_checkpoint(
      config,
      workdir,
      _OUTPUT_NAME.value,
      log=print if main_process else None,
      radius_search=(
        radius_search_settings(
          _SEARCH_EXAMPLES.value, _SEARCH_STEPS.value, _SEARCH_METHODS.value
        )
        if _RADIUS_SEARCH.value
        else None
      ),
      progress_bar=main_process,
    )
  except (
    FileNotFoundError,
    DataNotFoundError,
    CheckpointRestoreError,
  ) as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
    return 1
  return 0


def run():
  """The ``cure-certify`` script: `main` with the config's clear flag errors,
  in a process that keeps the memory it frees for its next bound call
  (`host_memory.keep_freed_memory`)."""
  host_memory.keep_freed_memory()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
