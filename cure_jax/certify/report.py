"""Certification results: per-point records, a summary, CSV/JSON and a table.

Records are columns, a dict from column name to a numpy array with one row
per test point, in this order (``<n>`` runs over the evaluated norms in the
order linf, l2, l1; PGD columns only for the attacked norms)::

  index, label, prediction, correct, certified_<n>..., stage_<n>...,
  [falsified_<n>...,] pgd_<n>..., union_certified, union_pgd

``stage_<n>`` names the bound method that certified the point (`STAGE_NONE`
if none did). ``falsified_<n>`` (only when branch and bound ran) marks the
correctly classified points for which a counterexample in the input set was
found and checked: neither certified nor undecided. Runs that ask for them
append float columns (`extend_records`): ``radius_certified_<n>`` and
``radius_pgd_<n>``, the largest certified and PGD-robust radius found
(`cure_jax.certify.radii`), and ``margin_lower_<n>``, the min margin lower
bound at the evaluation radius. Union columns follow docs/method.md §1: a point counts for the union
when it is correctly classified and certified (resp. PGD-robust) for every
evaluated (resp. attacked) norm.

The summary is a JSON-ready dict: clean, certified (per norm, per stage),
union and PGD-robust counts and accuracies, the radii, the settings, and the
time per point of every stage of every norm. `format_table` renders it as an
aligned text table. Files are written atomically (temporary file + rename),
so a reader never sees a half-written report.
"""

import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cure_jax.types import NORMS as NORM_ORDER

Records = dict[str, np.ndarray]

NORM_SYMBOLS = {"linf": "l∞", "l2": "l2", "l1": "l1"}
STAGE_NONE = "none"
_INT_COLUMNS = ("index", "label", "prediction")
# Prefixes (before the norm) of the optional float columns.
RADIUS_CERTIFIED = "radius_certified_"
RADIUS_PGD = "radius_pgd_"
MARGIN_LOWER = "margin_lower_"
FLOAT_PREFIXES = (RADIUS_CERTIFIED, RADIUS_PGD, MARGIN_LOWER)


def ordered_norms(norms) -> tuple[str, ...]:
  """``norms`` in the canonical order linf, l2, l1; unknown names raise."""
  unknown = sorted(set(norms) - set(NORM_ORDER))
  if unknown:
    raise ValueError(f"Unknown norm(s) {unknown}: use {NORM_ORDER}.")
  return tuple(n for n in NORM_ORDER if n in norms)


def record_columns(
  norms: Sequence[str],
  pgd_norms: Sequence[str] = (),
  falsified_norms: Sequence[str] = (),
) -> tuple[str, ...]:
  """The CSV columns for certified ``norms``, attacked ``pgd_norms`` and
  ``falsified_norms`` decided by branch and bound."""
  norms, pgd_norms = ordered_norms(norms), ordered_norms(pgd_norms)
  falsified_norms = ordered_norms(falsified_norms)
  return (
    ("index", "label", "prediction", "correct")
    + tuple(f"certified_{n}" for n in norms)
    + tuple(f"stage_{n}" for n in norms)
    + tuple(f"falsified_{n}" for n in falsified_norms)
    + tuple(f"pgd_{n}" for n in pgd_norms)
    + ("union_certified",)
    + (("union_pgd",) if pgd_norms else ())
  )


def _column_norms(records: Records, prefix: str) -> tuple[str, ...]:
  return ordered_norms(
    [c[len(prefix) :] for c in records if c.startswith(prefix)]
  )


def build_records(
  *,
  labels,
  predictions,
  certified: Mapping[str, Any],
  stages: Mapping[str, Any],
  pgd_robust: Mapping[str, Any] | None = None,
  index=None,
  falsified: Mapping[str, Any] | None = None,
) -> Records:
  """Assembles per-point records from per-norm results.

  Args:
    labels: [N] integer labels.
    predictions: [N] clean predictions.
    certified: norm -> [N] bool, certified by the cascade.
    stages: norm -> [N] names of the certifying method (`STAGE_NONE` if
      none); same norms as ``certified``.
    pgd_robust: optional norm -> [N] bool, robust to the PGD attack.
    index: [N] test-set indices (default 0, ..., N − 1).
    falsified: optional norm -> [N] bool, a checked counterexample was found
      (branch and bound); its norms must be among ``certified``'s.

  Returns:
    `Records`, columns as in `record_columns`.

  Raises:
    ValueError: for mismatched lengths or norms.
  """
  labels = np.asarray(labels, np.int64)
  num = labels.shape[0]
  pgd_robust = dict(pgd_robust or {})
  if set(certified) != set(stages) or not certified:
    raise ValueError(
      f"certified and stages need the same, non-empty norms; "
      f"got {sorted(certified)} and {sorted(stages)}."
    )
  correct = np.asarray(predictions, np.int64) == labels
  columns = {
    "index": np.arange(num) if index is None else np.asarray(index),
    "label": labels,
    "prediction": np.asarray(predictions, np.int64),
    "correct": correct,
  }
  norms, pgd_norms = ordered_norms(certified), ordered_norms(pgd_robust)
  falsified = dict(falsified or {})
  if set(falsified) - set(norms):
    raise ValueError(
      f"falsified has norms {sorted(set(falsified) - set(norms))} that are "
      f"not certified ({sorted(norms)})."
    )
  for n in norms:
    columns[f"certified_{n}"] = np.asarray(certified[n], bool)
  for n in norms:
    columns[f"stage_{n}"] = np.asarray(stages[n], dtype=object).astype(str)
  for n in ordered_norms(falsified):
    columns[f"falsified_{n}"] = correct & np.asarray(falsified[n], bool)
  for n in pgd_norms:
    columns[f"pgd_{n}"] = np.asarray(pgd_robust[n], bool)
  columns["union_certified"] = correct & np.all(
    [columns[f"certified_{n}"] for n in norms], axis=0
  )
  if pgd_norms:
    columns["union_pgd"] = correct & np.all(
      [columns[f"pgd_{n}"] for n in pgd_norms], axis=0
    )
  lengths = {k: v.shape for k, v in columns.items() if v.shape != (num,)}
  if lengths:
    raise ValueError(f"every column needs shape ({num},); got {lengths}.")
  return columns


def extend_records(records: Records, columns: Mapping[str, Any]) -> Records:
  """``records`` with float ``columns`` appended (a new dict).

  Args:
    records: per-point records (`build_records`).
    columns: name -> [N] values; each name is a prefix of `FLOAT_PREFIXES`
      followed by a norm, e.g. ``radius_certified_linf``.

  Returns:
    The records, then the new columns in the order given.

  Raises:
    ValueError: for a name outside that scheme, one already present, or a
      column of the wrong length.
  """
  num = len(records["index"])
  extended = dict(records)
  for name, values in columns.items():
    prefix = next((p for p in FLOAT_PREFIXES if name.startswith(p)), None)
    if prefix is None or name[len(prefix) :] not in NORM_ORDER:
      raise ValueError(
        f"column {name!r} must be one of {FLOAT_PREFIXES} followed by a norm "
        f"of {NORM_ORDER}."
      )
    values = np.asarray(values, np.float64)
    if name in extended or values.shape != (num,):
      raise ValueError(
        f"column {name!r} is already present or is not of shape ({num},); "
        f"got shape {values.shape}."
      )
    extended[name] = values
  return extended


def _fraction(mask: np.ndarray) -> dict[str, Any]:
  count = int(np.sum(mask))
  return {"count": count, "accuracy": count / len(mask)}


def _per_point(entry: Mapping[str, float], num_examples: int) -> dict:
  """Adds seconds per bounded point and per test point to a timing entry."""
  points = entry["points"]
  return dict(
    entry,
    seconds_per_point=entry["seconds"] / points if points else None,
    seconds_per_test_point=entry["seconds"] / num_examples,
  )


def _summarize_timing(timing: Mapping, num_examples: int) -> dict:
  """Per point times; ``total`` per norm sums the cascade's stages."""
  result = {"certify": {}, "pgd": {}}
  for norm, stages in timing.get("certify", {}).items():
    result["certify"][norm] = {
      m: _per_point(e, num_examples) for m, e in stages.items()
    }
    total = {
      k: sum(e[k] for e in stages.values())
      for k in ("seconds", "compile_seconds")
    }
    result["certify"][norm]["total"] = dict(
      total, seconds_per_test_point=total["seconds"] / num_examples
    )
  for norm, entry in timing.get("pgd", {}).items():
    result["pgd"][norm] = _per_point(entry, num_examples)
  return result


def summarize(
  records: Records,
  *,
  radii: Mapping[str, float],
  methods: Sequence[str],
  timing: Mapping | None = None,
  settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """The summary of a certification run (JSON-ready).

  Args:
    records: per-point records (`build_records`).
    radii: norm -> ε for every certified norm.
    methods: the cascade's bound methods, in order.
    timing: optional raw timings ``{'certify': {norm: {method: entry}},
      'pgd': {norm: entry}}``, each entry with ``points`` (points
      processed), ``rows`` (rows computed, padding included), ``seconds``
      (run time) and ``compile_seconds``.
    settings: anything else worth recording (batch size, α-CROWN steps, PGD
      settings, checkpoint, ...).

  Returns:
    A dict with ``num_examples``, ``radii``, ``methods``, ``settings``,
    ``clean``, ``certified`` (per norm, with ``by_stage`` counts),
    ``union_certified``, ``pgd_robust`` and ``union_pgd`` (when attacked),
    ``falsified`` per norm (when branch and bound ran: points with a
    checked counterexample), and ``timing`` with seconds per bounded point
    and per test point.

  Raises:
    ValueError: if ``radii`` and the records' norms differ, or there are no
      records.
  """
  num = len(records["index"])
  if num == 0:
    raise ValueError("cannot summarize zero records.")
  norms, pgd_norms = (
    _column_norms(records, "certified_"),
    _column_norms(records, "pgd_"),
  )
  if set(radii) != set(norms):
    raise ValueError(
      f"radii are given for {sorted(radii)} but the records "
      f"certify {list(norms)}."
    )
  summary = {
    "num_examples": num,
    "radii": {n: float(radii[n]) for n in norms},
    "methods": list(methods),
    "settings": dict(settings or {}),
    "clean": _fraction(records["correct"]),
    "certified": {},
    "union_certified": _fraction(records["union_certified"]),
  }
  for n in norms:
    stages = records[f"stage_{n}"]
    summary["certified"][n] = dict(
      _fraction(records[f"certified_{n}"]),
      by_stage={m: int(np.sum(stages == m)) for m in methods},
    )
  falsified_norms = _column_norms(records, "falsified_")
  if falsified_norms:
    summary["falsified"] = {
      n: _fraction(records[f"falsified_{n}"]) for n in falsified_norms
    }
  if pgd_norms:
    summary["pgd_robust"] = {
      n: _fraction(records[f"pgd_{n}"]) for n in pgd_norms
    }
    summary["union_pgd"] = _fraction(records["union_pgd"])
  summary["timing"] = _summarize_timing(timing or {}, num)
  return summary


def format_radius(eps: float) -> str:
  """ε as written in papers: ``2/255`` for multiples of 1/255, else ``0.5``."""
  short = f"{eps:g}"
  k = round(eps * 255)
  if len(short) > 6 and k > 0 and abs(eps * 255 - k) < 1e-6:
    return f"{k}/255"
  return short


def _percent(entry: Mapping | None) -> str:
  if entry is None:
    return "-"
  return f"{100 * entry['accuracy']:.2f}% ({entry['count']})"


def _seconds(value: float | None) -> str:
  return "-" if value is None else f"{value:.3g}"


def _align(rows: Sequence[Sequence[str]]) -> str:
  """Columns padded to a common width: the first left-, others right-aligned."""
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = []
  for row in rows:
    cells = [row[0].ljust(widths[0])] + [
      cell.rjust(width) for cell, width in zip(row[1:], widths[1:])
    ]
    lines.append("  ".join(cells).rstrip())
  return "\n".join(lines)


def format_table(summary: Mapping[str, Any]) -> str:
  """An aligned text table of a summary: one row per norm, then the union.

  Columns: threat model, radius, certified accuracy (count), points
  certified by each stage, points falsified (when branch and bound ran),
  PGD-robust accuracy, and seconds per test point of the whole cascade and
  of the attack.

  Args:
    summary: a dict from `summarize`.

  Returns:
    The table, preceded by a line with the clean accuracy.
  """
  methods = summary["methods"]
  pgd = summary.get("pgd_robust", {})
  falsified = summary.get("falsified")
  timing = summary["timing"]
  header = (
    ["threat", "radius", "certified"]
    + list(methods)
    + (["falsified"] if falsified else [])
    + ["PGD robust", "cert s/pt", "PGD s/pt"]
  )
  rows = [header]
  for norm, eps in summary["radii"].items():
    cert = summary["certified"][norm]
    cert_time = timing["certify"].get(norm, {}).get("total", {})
    pgd_time = timing["pgd"].get(norm, {})
    rows.append(
      [NORM_SYMBOLS[norm], format_radius(eps), _percent(cert)]
      + [str(cert["by_stage"][m]) for m in methods]
      + ([str(falsified[norm]["count"])] if falsified else [])
      + [
        _percent(pgd.get(norm)),
        _seconds(cert_time.get("seconds_per_test_point")),
        _seconds(pgd_time.get("seconds_per_test_point")),
      ]
    )
  rows.append(
    ["union", "", _percent(summary["union_certified"])]
    + [""] * (len(methods) + bool(falsified))
    + [_percent(summary.get("union_pgd")), "", ""]
  )
  clean = summary["clean"]
  title = (
    f"{summary['num_examples']} test points, clean accuracy "
    f"{100 * clean['accuracy']:.2f}% ({clean['count']})"
  )
  return title + "\n" + _align(rows)


def _write_atomic(path: str, text: str) -> None:
  """Writes ``text`` to a temporary file next to ``path``, then renames it."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with tempfile.NamedTemporaryFile(
    "w",
    dir=directory,
    delete=False,
    prefix=".tmp_",
    encoding="utf-8",
    newline="",
  ) as f:
    tmp = f.name
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  try:
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def _cell(value) -> str:
  if isinstance(value, (bool, np.bool_)):
    return "1" if value else "0"
  return str(value)


def write_csv(path: str, records: Records) -> None:
  """Writes records as CSV (header row; booleans as 1/0), atomically."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(list(records))
  for row in zip(*records.values()):
    writer.writerow([_cell(v) for v in row])
  _write_atomic(path, buffer.getvalue())


def _parse_column(name: str, cells: Sequence[str]) -> np.ndarray:
  if name in _INT_COLUMNS:
    return np.asarray([int(c) for c in cells], np.int64)
  if name.startswith("stage_"):
    return np.asarray(cells, dtype=str)
  if name.startswith(FLOAT_PREFIXES):
    return np.asarray([float(c) for c in cells], np.float64)
  if name == "correct" or name.startswith(
    ("certified_", "falsified_", "pgd_", "attack_", "union_")
  ):
    if set(cells) - {"0", "1"}:
      raise ValueError(
        f"column {name!r} must hold 0/1, got "
        f"{sorted(set(cells) - {'0', '1'})[:3]}."
      )
    return np.asarray([c == "1" for c in cells], bool)
  raise ValueError(f"unknown column {name!r} in a certification CSV.")


def read_csv(path: str) -> Records:
  """Reads records written by `write_csv`, with their types restored."""
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  if not rows:
    raise ValueError(f"{path} is empty; expected a header row.")
  header, body = rows[0], rows[1:]
  return {
    name: _parse_column(name, [r[i] for r in body])
    for i, name in enumerate(header)
  }


def write_json(path: str, summary: Mapping[str, Any]) -> None:
  """Writes the summary as indented JSON, atomically (NaN is rejected)."""
  _write_atomic(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def write_report(
  directory: str,
  records: Records,
  summary: Mapping[str, Any],
  name: str = "certify",
) -> tuple[str, str]:
  """Writes ``<name>.csv`` and ``<name>.json`` into ``directory``.

  Args:
    directory: output folder (created if missing).
    records: per-point records.
    summary: the summary dict.
    name: file stem.

  Returns:
    The paths of the CSV and JSON files.
  """
  csv_path = os.path.join(directory, f"{name}.csv")
  json_path = os.path.join(directory, f"{name}.json")
  write_csv(csv_path, records)
  write_json(json_path, summary)
  return csv_path, json_path


def read_json(path: str) -> dict[str, Any]:
  """Reads a summary written by `write_json`."""
  with open(path, encoding="utf-8") as f:
    return json.load(f)
