"""One run's certification results, read from its folder.

A run folder holds ``certify.csv`` (`cure_jax.certify.report`) and, where it
exists, ``certify.json`` (the summary) and ``results.json`` (training's final
evaluation). The method name comes from those JSON files (``method``), else
from the folder's name.
"""

import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from cure_jax.certify import report

RESULTS_FILE = "results.json"


class RunResults(NamedTuple):
  """A certification run.

  Attributes:
    path: the run's folder.
    name: the method name shown in legends.
    records: the per-point records of ``<stem>.csv``.
    summary: ``<stem>.json``, or {}.
    results: ``results.json``, or {}.
  """

  path: str
  name: str
  records: report.Records
  summary: dict[str, Any]
  results: dict[str, Any]


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_run(run_dir: str, stem: str = "certify") -> RunResults:
  """Reads ``run_dir``'s certification reports.

  Args:
    run_dir: the run's folder.
    stem: the reports' file stem (``python -m cure_jax.certify
      --output_name``).

  Returns:
    `RunResults`.

  Raises:
    FileNotFoundError: there is no ``<stem>.csv`` in ``run_dir``.
  """
  csv_path = os.path.join(run_dir, f"{stem}.csv")
  if not os.path.exists(csv_path):
    raise FileNotFoundError(
      f"{csv_path} does not exist: certify the run first (python -m "
      f"cure_jax.certify --workdir={run_dir})."
    )
  summary = _read_json(os.path.join(run_dir, f"{stem}.json"))
  results = _read_json(os.path.join(run_dir, RESULTS_FILE))
  name = (
    summary.get("method")
    or results.get("method")
    or os.path.basename(os.path.normpath(run_dir))
  )
  return RunResults(
    os.path.abspath(run_dir),
    str(name),
    report.read_csv(csv_path),
    summary,
    results,
  )


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
  """Scalars of nested dicts as ``a/b/c`` keys (lists and None dropped)."""
  if isinstance(value, Mapping):
    for key, item in value.items():
      _flatten(f"{prefix}/{key}" if prefix else str(key), item, into)
  elif isinstance(value, (bool, int, float, str)):
    into[prefix] = value


def hyperparameters(run: RunResults) -> dict[str, bool | int | float | str]:
  """The run's settings as flat scalars, for TensorBoard's hparams.

  Training's ``results.json`` scalars that are settings (method, dataset,
  steps, radii) and the certification's radii, methods and settings.
  """
  values: dict[str, Any] = {"method": run.name}
  for key in ("dataset", "steps"):
    if key in run.results:
      values[key] = run.results[key]
  _flatten("", {"eps": run.summary.get("radii", {})}, values)
  if "methods" in run.summary:
    values["certify_methods"] = ",".join(run.summary["methods"])
  _flatten("certify", run.summary.get("settings", {}), values)
  for key in ("dataset", "num_examples"):
    if key in run.summary:
      values[key] = run.summary[key]
  return values


def metrics(run: RunResults) -> dict[str, float]:
  """The run's headline figures, from its records: accuracies at the
  evaluation radii and mean radii over the correctly classified points that
  have one (the searched points)."""
  records = run.records
  correct = np.asarray(records["correct"], bool)
  values = {"clean_accuracy": float(np.mean(correct))}
  for name, column in records.items():
    if name.startswith(("certified_", "pgd_", "union_")):
      values[f"accuracy/{name}"] = float(np.mean(column))
    elif name.startswith((report.RADIUS_CERTIFIED, report.RADIUS_PGD)):
      rows = correct & np.isfinite(column)
      values[f"mean_{name}"] = (
        float(np.mean(column[rows])) if rows.any() else 0.0
      )
  return values
