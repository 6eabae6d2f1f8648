"""Accuracy-against-ε curves of a run, logged to TensorBoard.

TensorBoard's scalars take integer steps, so the curves are logged on G
evenly spaced radii ε_k = k · eps_max / (G − 1): the scalar
``certified_accuracy/<n>`` (``pgd_accuracy/<n>``) at step k is the accuracy
at ε_k, and ``radius/<n>`` at step k is ε_k itself. The figure of
`curve_figure.draw_figure` goes in as an image, and the run's settings with
its headline figures as hparams (under ``<logdir>/hparams``), so that runs
compare in the HParams tab.
"""

from collections.abc import Mapping

from cure_jax.plot import accuracy_curves, curve_figure, run_results
from cure_jax.plot.run_results import RunResults


def log_curves(
  run: RunResults,
  logdir: str,
  points: int = 101,
  hparams: Mapping[str, bool | int | float | str] | None = None,
) -> str:
  """Writes ``run``'s curves, figure and hparams as TensorBoard events.

  Args:
    run: a run from `run_results.read_run`.
    logdir: the events' folder (e.g. ``<run>/tensorboard/curves``).
    points: G, the radii per curve.
    hparams: settings to record; default `run_results.hyperparameters`.

  Returns:
    ``logdir``.
  """
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

  hparams = dict(
    run_results.hyperparameters(run) if hparams is None else hparams
  )
  with SummaryWriter(logdir) as writer:
    for norm in accuracy_curves.run_norms(run.records):
      curves = accuracy_curves.norm_curves(
        run.records, run.summary, norm, points
      )
      if curves.eps is None:
        continue
      for step, eps in enumerate(curves.eps):
        writer.add_scalar(f"radius/{norm}", float(eps), step)
        writer.add_scalar(
          f"certified_accuracy/{norm}", float(curves.certified[step]), step
        )
        if curves.pgd is not None:
          writer.add_scalar(
            f"pgd_accuracy/{norm}", float(curves.pgd[step]), step
          )
    figure = curve_figure.draw_figure([run])
    writer.add_figure("accuracy_against_radius", figure, close=False)
    writer.add_hparams(
      hparams,
      {f"hparams/{k}": v for k, v in run_results.metrics(run).items()},
      name="hparams",
    )
  return logdir
