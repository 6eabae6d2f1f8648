"""Interchange with other verifiers: ONNX networks and VNNLIB properties.

>>> apply_fn, params = load_onnx("model.onnx")     # input layout as in ONNX
>>> bounds = crown(apply_fn)(params, Box(lower, upper))
>>> prop = read_vnnlib("prop.vnnlib")              # boxes and unsafe specs
>>> onnx.save(to_onnx(model, variables, (28, 28, 1)), "model.onnx")
"""

from cure_jax.interchange.onnx_export import onnx_input_shape, to_onnx
from cure_jax.interchange.onnx_import import (
  OnnxSignature,
  UnsupportedOnnxError,
  load_onnx,
  read_model,
  signature,
)
from cure_jax.interchange.onnx_ops import OPERATORS
from cure_jax.interchange.vnncomp_instances import (
  INSTANCES_FILE,
  Instance,
  read_instances,
  write_instances,
)
from cure_jax.interchange.vnnlib import (
  InputRegion,
  OutputSpec,
  VnnlibError,
  VnnlibProperty,
  float32_box,
  parse_vnnlib,
  read_vnnlib,
)
from cure_jax.interchange.vnnlib_writer import robustness_property

__all__ = [
  "INSTANCES_FILE",
  "OPERATORS",
  "InputRegion",
  "Instance",
  "OnnxSignature",
  "OutputSpec",
  "UnsupportedOnnxError",
  "VnnlibError",
  "VnnlibProperty",
  "float32_box",
  "load_onnx",
  "onnx_input_shape",
  "parse_vnnlib",
  "read_instances",
  "read_model",
  "read_vnnlib",
  "robustness_property",
  "signature",
  "to_onnx",
  "write_instances",
]
