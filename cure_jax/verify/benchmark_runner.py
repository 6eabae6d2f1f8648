"""Verifies every instance of a VNN-COMP ``instances.csv``.

Each network is loaded once and its programs compiled once for all the
properties verified on it. Per instance a result file is written into
``out_dir`` (``NNNN_<onnx>_<vnnlib>.txt``, VNN-COMP's format), and the CSV
summary covers them all. A network or property that cannot be verified
(unsupported operator, VNNLIB outside the subset, sizes that do not match,
a missing file) gives an `ERROR` row with the message; the others go on.
"""

import os
from collections.abc import Callable
from typing import Any

from cure_jax.interchange.onnx_import import UnsupportedOnnxError
from cure_jax.interchange.vnncomp_instances import read_instances
from cure_jax.interchange.vnnlib import VnnlibError
from cure_jax.verify.instance_runner import (
  InstanceResult,
  error_result,
  verify_instance,
)
from cure_jax.verify.loaded_network import ShapeMismatchError, load_network
from cure_jax.verify.result_files import write_result, write_summary

# What makes an instance unverifiable here, rather than a bug.
INSTANCE_ERRORS = (
  UnsupportedOnnxError,
  VnnlibError,
  ShapeMismatchError,
  FileNotFoundError,
)


def _stem(path: str) -> str:
  name = os.path.basename(path)
  for suffix in (".gz", ".onnx", ".vnnlib"):
    name = name.removesuffix(suffix)
  return name


def result_name(index: int, result: InstanceResult) -> str:
  """``NNNN_<onnx stem>_<vnnlib stem>.txt``: unique and sorted by row."""
  return (
    f"{index:04d}_{_stem(result.onnx_path)}_{_stem(result.vnnlib_path)}.txt"
  )


def verify_benchmark(
  instances_csv: str,
  out_dir: str | None = None,
  summary: str | None = None,
  timeout: float | None = None,
  log: Callable[[InstanceResult], Any] | None = None,
  **options,
) -> list[InstanceResult]:
  """Verifies the instances of ``instances_csv`` in order.

  Args:
    instances_csv: VNN-COMP's csv (paths relative to its folder).
    out_dir: where result files go (default: ``<csv folder>/results``).
    summary: the CSV summary's path (default: ``<out_dir>/summary.csv``).
    timeout: seconds per instance, overriding the csv's when given.
    log: called with each result as it is known (None: silent).
    **options: passed to `verify_instance` (stages, alpha_steps, attack, bab).

  Returns:
    One `InstanceResult` per row.

  Raises:
    FileNotFoundError: the csv does not exist.
    ValueError: a row of the csv is malformed.
  """
  instances = read_instances(instances_csv)
  out_dir = out_dir or os.path.join(
    os.path.dirname(os.path.abspath(instances_csv)), "results"
  )
  networks, results = {}, []
  for index, instance in enumerate(instances):
    seconds = instance.timeout if timeout is None else timeout
    try:
      network = networks.get(instance.onnx_path)
      first_use = network is None
      if first_use:
        network = load_network(instance.onnx_path)
        networks[instance.onnx_path] = network
      result = verify_instance(
        instance.onnx_path,
        instance.vnnlib_path,
        seconds,
        network=network,
        **options,
      )
      if first_use:  # loading counts once, for the first instance
        result = result._replace(
          prepare_seconds=result.prepare_seconds + network.load_seconds
        )
    except INSTANCE_ERRORS as error:
      result = error_result(
        instance.onnx_path, instance.vnnlib_path, seconds, error
      )
    if log is not None:
      log(result)
    write_result(os.path.join(out_dir, result_name(index, result)), result)
    results.append(result)
  write_summary(summary or os.path.join(out_dir, "summary.csv"), results)
  return results
