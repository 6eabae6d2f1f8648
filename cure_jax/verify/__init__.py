"""Verifies ONNX networks against VNNLIB properties, VNN-COMP style.

  python -m cure_jax.verify MODEL.onnx PROPERTY.vnnlib --timeout 60
  python -m cure_jax.verify --instances benchmark/instances.csv

>>> result = verify_instance("model.onnx", "prop.vnnlib", timeout=60)
>>> result.result            # 'sat', 'unsat', 'timeout' or 'unknown'
>>> results = verify_benchmark("benchmark/instances.csv")
"""

from cure_jax.interchange.onnx_import import UnsupportedOnnxError
from cure_jax.interchange.vnnlib import VnnlibError
from cure_jax.verify.benchmark_runner import verify_benchmark
from cure_jax.verify.falsify import AttackSettings, Counterexample
from cure_jax.verify.instance_runner import (
  DEFAULT_STAGES,
  ERROR,
  SAT,
  STAGES,
  TIMEOUT,
  UNKNOWN,
  UNSAT,
  InstanceResult,
  verify_instance,
)
from cure_jax.verify.loaded_network import (
  LoadedNetwork,
  ShapeMismatchError,
  load_network,
)
from cure_jax.verify.result_files import (
  result_text,
  write_result,
  write_summary,
)

__all__ = [
  "DEFAULT_STAGES",
  "ERROR",
  "SAT",
  "STAGES",
  "TIMEOUT",
  "UNKNOWN",
  "UNSAT",
  "AttackSettings",
  "Counterexample",
  "InstanceResult",
  "LoadedNetwork",
  "ShapeMismatchError",
  "UnsupportedOnnxError",
  "VnnlibError",
  "load_network",
  "result_text",
  "verify_benchmark",
  "verify_instance",
  "write_result",
  "write_summary",
]
