r"""A comparison table of several certified runs, as Markdown.

  python -m cure_jax.certify.table /tmp/mnist_sabr /tmp/mnist_cure_max ... \
      [--first=500] [--name=certify]

Each argument is a workdir holding ``certify.csv`` (written by
``python -m cure_jax.certify``) and, from training, ``results.json``. Rows
are the runs; columns clean, certified accuracy per norm, union certified,
PGD union (the empirical upper bound), the training time and the
certification's run seconds per test point (all norms, cascade and PGD).
``--first=N`` recomputes every figure on the first N test points of each CSV, so runs
certified on different numbers of points compare on the same points. Runs
with a ``beyond_lp.csv`` (``python -m cure_jax.certify.beyond_lp``) add a
second table: certified and empirical accuracy per patch size and
transformation family (``--beyond_lp_first=N`` as ``--first``).
"""

import argparse
import json
import os
from collections.abc import Sequence

import numpy as np

from cure_jax.certify.report import NORM_SYMBOLS, ordered_norms, read_csv


def run_row(
  workdir: str, first: int | None = None, name: str = "certify"
) -> dict[str, object]:
  """The figures of one run (fractions in [0, 1]) from its reports.

  Uses the first ``first`` test points (None: all) of ``<name>.csv``. Returns
  method, points, clean, certified_<norm>, union_certified (every norm),
  union_linf_l2 (with a third norm present), union_pgd, train_seconds (None
  without results.json) and `certify_seconds_per_point`.

  Raises:
    FileNotFoundError: the workdir has no ``<name>.csv``.
    ValueError: ``first`` exceeds the certified points.
  """
  records = read_csv(os.path.join(workdir, f"{name}.csv"))
  points = len(records["index"])
  if first is not None:
    if first > points:
      raise ValueError(
        f"{workdir} certified {points} points, fewer than --first={first}."
      )
    records = {k: v[:first] for k, v in records.items()}
  summary_path = os.path.join(workdir, f"{name}.json")
  summary = {}
  if os.path.exists(summary_path):
    with open(summary_path, encoding="utf-8") as f:
      summary = json.load(f)
  method = summary.get("method", os.path.basename(os.path.normpath(workdir)))
  row = {
    "method": method,
    "points": len(records["index"]),
    "clean": float(np.mean(np.asarray(records["correct"], bool))),
    "certify_seconds_per_point": certify_seconds_per_point(summary),
  }
  norms = ordered_norms(
    [c[len("certified_") :] for c in records if c.startswith("certified_")]
  )
  for norm in norms:
    row[f"certified_{norm}"] = float(
      np.mean(np.asarray(records[f"certified_{norm}"], bool))
    )
  row["union_certified"] = float(
    np.mean(np.asarray(records["union_certified"], bool))
  )
  if {"linf", "l2"} <= set(norms) and len(norms) > 2:
    # The paper's union is l∞ and l2; l1 is optional (docs/method.md §1).
    row["union_linf_l2"] = float(
      np.mean(
        np.asarray(records["certified_linf"], bool)
        & np.asarray(records["certified_l2"], bool)
      )
    )
  if "union_pgd" in records:
    row["union_pgd"] = float(np.mean(np.asarray(records["union_pgd"], bool)))
  results_path = os.path.join(workdir, "results.json")
  row["train_seconds"] = None
  if os.path.exists(results_path):
    with open(results_path, encoding="utf-8") as f:
      row["train_seconds"] = json.load(f).get("train_seconds_this_run")
  return row


def certify_seconds_per_point(summary: dict) -> float | None:
  """Run seconds per test point of a certification, every norm's cascade and
  attack together (compilation excluded); None without timings."""
  timing = summary.get("timing", {})
  entries = [stages["total"] for stages in timing.get("certify", {}).values()]
  entries += list(timing.get("pgd", {}).values())
  if not entries or not summary.get("num_examples"):
    return None
  return sum(e["seconds"] for e in entries) / summary["num_examples"]


def markdown(rows: Sequence[dict[str, object]]) -> str:
  """The rows as a Markdown table (percentages, minutes)."""
  norms = ordered_norms(
    [k[len("certified_") :] for k in rows[0] if k.startswith("certified_")]
  )
  header = (
    ["method", "points", "clean"]
    + [f"cert. {NORM_SYMBOLS[n]}" for n in norms]
    + ["cert. union"]
    + (["cert. l∞ ∪ l2"] if "union_linf_l2" in rows[0] else [])
    + ["PGD union", "train min", "certify s/point"]
  )
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [str(row["method"]), str(row["points"]), f"{row['clean']:.1%}"]
    cells += [f"{row[f'certified_{n}']:.1%}" for n in norms]
    cells.append(f"{row['union_certified']:.1%}")
    if "union_linf_l2" in rows[0]:
      cells.append(f"{row['union_linf_l2']:.1%}")
    cells.append(f"{row['union_pgd']:.1%}" if "union_pgd" in row else "—")
    seconds = row["train_seconds"]
    cells.append("—" if seconds is None else f"{seconds / 60:.1f}")
    per_point = row.get("certify_seconds_per_point")
    cells.append("—" if per_point is None else f"{per_point:.3f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def beyond_lp_row(
  workdir: str, first: int | None = None, name: str = "beyond_lp"
) -> dict[str, object] | None:
  """The beyond-l_p figures of one run, or None if it has no such report:
  method, points, clean and, per threat in report order, ``certified_<t>``
  and ``attack_<t>`` fractions.

  Raises:
    ValueError: ``first`` exceeds the evaluated points.
  """
  path = os.path.join(workdir, f"{name}.csv")
  if not os.path.exists(path):
    return None
  records = read_csv(path)
  points = len(records["index"])
  if first is not None:
    if first > points:
      raise ValueError(
        f"{path} holds {points} points, fewer than --first={first}."
      )
    records = {k: v[:first] for k, v in records.items()}
  method = os.path.basename(os.path.normpath(workdir))
  summary_path = os.path.join(workdir, f"{name}.json")
  if os.path.exists(summary_path):
    with open(summary_path, encoding="utf-8") as f:
      method = json.load(f).get("method", method)
  row = {
    "method": method,
    "points": len(records["index"]),
    "clean": float(np.mean(np.asarray(records["correct"], bool))),
  }
  for column in records:
    if column.startswith(("certified_", "attack_")):
      row[column] = float(np.mean(np.asarray(records[column], bool)))
  return row


def beyond_lp_markdown(rows: Sequence[dict[str, object]]) -> str:
  """Certified (empirical) accuracy per threat, one row per run."""
  threats = []
  for row in rows:
    threats += [
      k[len("certified_") :]
      for k in row
      if k.startswith("certified_") and k[len("certified_") :] not in threats
    ]
  header = ["method", "points", "clean"] + [
    t.replace("patch_", "patch ") for t in threats
  ]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [str(row["method"]), str(row["points"]), f"{row['clean']:.1%}"]
    for t in threats:
      cert, attack = row.get(f"certified_{t}"), row.get(f"attack_{t}")
      cells.append("—" if cert is None else f"{cert:.1%} ({attack:.1%})")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--first", type=int, default=None)
  parser.add_argument("--name", default="certify")
  parser.add_argument(
    "--beyond_lp_first",
    type=int,
    default=None,
    help="points of beyond_lp.csv to use (default all)",
  )
  args = parser.parse_args(argv)
  print(markdown([run_row(w, args.first, args.name) for w in args.workdirs]))
  beyond = [beyond_lp_row(w, args.beyond_lp_first) for w in args.workdirs]
  beyond = [row for row in beyond if row is not None]
  if beyond:
    print(
      "\nBeyond l_p: certified (empirical) accuracy per threat model, "
      "from beyond_lp.csv\n"
    )
    print(beyond_lp_markdown(beyond))


if __name__ == "__main__":
  main()
