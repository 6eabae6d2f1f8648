"""VNN-COMP's ``instances.csv``: one ``onnx,vnnlib,timeout`` row per instance.

A benchmark folder holds ``onnx/``, ``specs/`` and ``instances.csv``, whose
paths are relative to the csv's folder and whose timeouts are in seconds;
the file has no header.
"""

import csv
import os
from collections.abc import Iterable
from typing import NamedTuple

INSTANCES_FILE = "instances.csv"


def _number(value: float) -> str:
  return repr(float(value))


def write_instances(path: str, rows: Iterable[tuple[str, str, float]]) -> None:
  """Writes VNN-COMP's ``instances.csv``: ``onnx,vnnlib,timeout`` per line.

  Paths are written as given (relative to the csv's folder by convention);
  there is no header.
  """
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    for onnx_path, vnnlib_path, timeout in rows:
      writer.writerow([onnx_path, vnnlib_path, _number(timeout)])


class Instance(NamedTuple):
  """One row of an instances.csv, its paths resolved against the csv's folder."""

  onnx_path: str
  vnnlib_path: str
  timeout: float


def read_instances(path: str) -> list[Instance]:
  """The rows of an ``instances.csv``, paths made relative to the csv's folder.

  Raises:
    ValueError: a row without three fields or with a non-numeric timeout,
      naming its line.
  """
  folder = os.path.dirname(os.path.abspath(path))
  instances = []
  with open(path, newline="") as f:
    for number, row in enumerate(csv.reader(f), start=1):
      if not row or all(not cell.strip() for cell in row):
        continue
      if len(row) != 3:
        raise ValueError(
          f"{path} line {number}: expected onnx,vnnlib,timeout; got {row}."
        )
      onnx_path, vnnlib_path, timeout = (cell.strip() for cell in row)
      try:
        seconds = float(timeout)
      except ValueError:
        raise ValueError(
          f"{path} line {number}: timeout {timeout!r} is not a number."
        ) from None
      instances.append(
        Instance(
          os.path.join(folder, onnx_path),
          os.path.join(folder, vnnlib_path),
          seconds,
        )
      )
  return instances
