"""An ONNX network ready to verify: the JAX function, its parameters, the
onnxruntime session that double-checks counterexamples, and its compiled
programs."""

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cure_jax.interchange import onnx_import
from cure_jax.parallel.precision import certification_precision
from cure_jax.types import Params


class ShapeMismatchError(ValueError):
  """The property's variables do not match the network's input or output."""


@dataclasses.dataclass
class LoadedNetwork:
  """A network loaded once and shared by the properties verified on it.

  Attributes:
    path: the ONNX file.
    apply_fn: ``apply_fn(params, x) -> output`` (`onnx_import.load_onnx`).
    params: its parameters.
    input_shape: the input of one example, batch axis (1) included.
    load_seconds: reading and importing the file.
    session: an onnxruntime session, or None without onnxruntime.
    compiled: compiled programs by (name, static arguments, shapes).
  """

  path: str
  apply_fn: Callable[[Params, Any], Any]
  params: Params
  input_shape: tuple[int, ...]
  load_seconds: float
  session: Any = None
  compiled: dict = dataclasses.field(default_factory=dict)

  def outputs(self, x: np.ndarray) -> np.ndarray:
    """The flattened output of one input (eager JAX, no compilation)."""
    with certification_precision():
      y = self.apply_fn(self.params, jnp.asarray(x).reshape(self.input_shape))
    return np.asarray(y, np.float64).reshape(-1)

  def reference_outputs(self, x: np.ndarray) -> np.ndarray | None:
    """The flattened output by onnxruntime, or None without it."""
    if self.session is None:
      return None
    name = self.session.get_inputs()[0].name
    feed = {name: np.asarray(x, np.float32).reshape(self.input_shape)}
    return np.asarray(self.session.run(None, feed)[0], np.float64).reshape(-1)

  def check_sizes(self, num_inputs: int, num_outputs: int) -> None:
    """Raises `ShapeMismatchError` unless the property fits the network."""
    inputs = math.prod(self.input_shape)
    outputs = jax.eval_shape(
      self.apply_fn,
      self.params,
      jax.ShapeDtypeStruct(self.input_shape, jnp.float32),
    ).size
    if (inputs, outputs) != (num_inputs, num_outputs):
      raise ShapeMismatchError(
        f"the property declares {num_inputs} inputs and {num_outputs} "
        f"outputs; the network {self.path} has {inputs} (shape "
        f"{self.input_shape}) and {outputs}."
      )

  def run(self, name: str, jitted, static_args, dynamic_args, clock):
    """``jitted(*static_args, *dynamic_args)``, compiled once per shapes.

    Compilation is added to ``clock.prepare``, the run (until its outputs are
    ready) to ``clock.verify``.
    """
    shapes = jax.tree.map(
      lambda a: (np.shape(a), str(getattr(a, "dtype", type(a)))), dynamic_args
    )
    key = (name, static_args, str(shapes))
    if key not in self.compiled:
      start = time.perf_counter()
      with certification_precision():
        self.compiled[key] = jitted.lower(*static_args, *dynamic_args).compile()
      clock.prepare += time.perf_counter() - start
    start = time.perf_counter()
    value = jax.block_until_ready(self.compiled[key](*dynamic_args))
    clock.verify += time.perf_counter() - start
    return value


def _session(path: str):
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  model = onnx_import.read_model(path)
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = 1
  return onnxruntime.InferenceSession(
    model.SerializeToString(), options, providers=["CPUExecutionProvider"]
  )


def load_network(path: str) -> LoadedNetwork:
  """Imports ``path`` (see `onnx_import.load_onnx`) for verification.

  The input's first dimension is the batch axis, 1 or symbolic (set to 1);
  the others must be fixed.

  Raises:
    UnsupportedOnnxError: see `load_onnx`; or an input without such a batch
      axis, or with a symbolic dimension besides it.
  """
  start = time.perf_counter()
  model = onnx_import.read_model(path)
  apply_fn, params = onnx_import.load_onnx(model)
  shape = onnx_import.signature(model).input_shape
  if len(shape) < 2 or shape[0] not in (None, 1):
    raise onnx_import.UnsupportedOnnxError(
      f"{path}: input shape {shape} has no batch axis (a first dimension "
      "of 1 or symbolic); export the network with one."
    )
  if any(d is None for d in shape[1:]):
    raise onnx_import.UnsupportedOnnxError(
      f"{path}: input shape {shape} has a symbolic dimension besides the "
      "batch; export the network with fixed input dimensions."
    )
  input_shape = (1,) + tuple(shape[1:])
  session = _session(path)
  return LoadedNetwork(
    path,
    apply_fn,
    params,
    input_shape,
    time.perf_counter() - start,
    session,
  )
