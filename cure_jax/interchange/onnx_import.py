"""`load_onnx`: an ONNX graph as a pure JAX function the bound transforms accept.

  apply_fn, params = load_onnx("model.onnx")
  logits = apply_fn(params, x)                       # x in the ONNX layout
  bounds = crown(apply_fn)(params, Box(lower, upper))

``params`` holds the graph's floating-point initializers by name; integer
initializers (shapes, axes, indices) and ``Constant`` nodes are baked into
``apply_fn``, so that shapes stay static under `jax.jit` and the bound
transforms. The input keeps the ONNX model's layout (images are NCHW) and
shape, batch first; a batch axis the graph fixes (often 1) is fixed for
``apply_fn`` too (`jax.vmap` a fixed-batch network over more examples).

Every node is checked when the file is loaded: an operator outside
`onnx_ops.OPERATORS`, an attribute an operator does not understand, an
operator outside the default ONNX domain or a requested output an operator
does not compute raises `UnsupportedOnnxError` naming the operator and its
node. Nothing is approximated.
"""

import gzip
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from cure_jax.interchange.onnx_ops import OPERATORS, OperatorError
from cure_jax.types import Params


class UnsupportedOnnxError(NotImplementedError):
  """The graph holds an operator (or a use of one) that cannot be imported."""


class OnnxSignature(NamedTuple):
  """The graph's single input and output.

  Attributes:
    input_name: the input's name.
    input_shape: its dimensions, None for a symbolic one (e.g. the batch).
    output_name: the output's name.
    output_shape: its dimensions, None for a symbolic one.
  """

  input_name: str
  input_shape: tuple[int | None, ...]
  output_name: str
  output_shape: tuple[int | None, ...]


def require_onnx():
  """The ``onnx`` module, or an ImportError that says how to install it."""
  try:
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
      "cure_jax.interchange needs the onnx package: pip install "
      "'cure_jax[onnx]' (onnx and onnxruntime)."
    ) from error
  return onnx


def read_model(source) -> Any:
  """An ``onnx.ModelProto`` from a path (``.onnx`` or ``.onnx.gz``) or itself."""
  onnx = require_onnx()

  if isinstance(source, onnx.ModelProto):
    return source
  path = os.fspath(source)
  if path.endswith(".gz"):
    with gzip.open(path, "rb") as f:
      return onnx.load_from_string(f.read())
  return onnx.load(path)


def _dims(value_info) -> tuple[int | None, ...]:
  dims = value_info.type.tensor_type.shape.dim
  return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


def signature(source) -> OnnxSignature:
  """The `OnnxSignature` of a model (path or ``ModelProto``).

  Raises:
    UnsupportedOnnxError: the graph has not exactly one input (besides its
      initializers) and one output.
  """
  graph = read_model(source).graph
  initializers = {t.name for t in graph.initializer}
  inputs = [i for i in graph.input if i.name not in initializers]
  if len(inputs) != 1 or len(graph.output) != 1:
    raise UnsupportedOnnxError(
      f"the graph has inputs {[i.name for i in inputs]} and outputs "
      f"{[o.name for o in graph.output]}; cure_jax imports networks with "
      "exactly one input and one output."
    )
  return OnnxSignature(
    inputs[0].name,
    _dims(inputs[0]),
    graph.output[0].name,
    _dims(graph.output[0]),
  )


def _attributes(node) -> dict[str, Any]:
  import onnx  # pylint: disable=g-import-not-at-top

  attrs = {}
  for attribute in node.attribute:
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
      value = value.decode()
    elif isinstance(value, list) and value and isinstance(value[0], bytes):
      value = [v.decode() for v in value]
    attrs[attribute.name] = value
  return attrs


def _describe(node, index: int) -> str:
  name = f"{node.name!r}" if node.name else "(unnamed)"
  return f"ONNX operator {node.op_type!r} at node {name} (#{index})"


def _check_node(node, index: int, attrs: dict[str, Any]) -> None:
  """Raises `UnsupportedOnnxError` unless the node can be imported exactly."""
  where = _describe(node, index)
  if node.domain not in ("", "ai.onnx"):
    raise UnsupportedOnnxError(
      f"{where} is in domain {node.domain!r}; only the default ONNX domain "
      "is supported."
    )
  operator = OPERATORS.get(node.op_type)
  if operator is None:
    raise UnsupportedOnnxError(
      f"{where} is not supported. Supported operators: "
      f"{', '.join(sorted(OPERATORS))}."
    )
  unknown = sorted(set(attrs) - operator.attributes)
  if unknown:
    raise UnsupportedOnnxError(
      f"{where} has attribute(s) {unknown} that cure_jax does not "
      f"implement (it understands {sorted(operator.attributes)})."
    )
  extra = [name for name in node.output[operator.outputs :] if name]
  if extra:
    raise UnsupportedOnnxError(
      f"{where} is asked for output(s) {extra} beyond the first "
      f"{operator.outputs}, which cure_jax does not compute."
    )


def _initializers(graph) -> tuple[dict[str, np.ndarray], Params]:
  """(integer initializers, baked in; float initializers, the params)."""
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top

  fixed, params = {}, {}
  for tensor in graph.initializer:
    value = numpy_helper.to_array(tensor)
    if np.issubdtype(value.dtype, np.floating):
      params[tensor.name] = jnp.asarray(value)
    else:
      fixed[tensor.name] = value
  return fixed, params


def load_onnx(source) -> tuple[Callable[[Params, Any], Any], Params]:
  """Imports an ONNX network as ``(apply_fn, params)``.

  Args:
    source: a path to an ``.onnx`` (or ``.onnx.gz``) file, or an
      ``onnx.ModelProto``.

  Returns:
    ``apply_fn(params, x)``, pure: the graph's output for ``x`` (the graph's
    input layout and shape, e.g. NCHW images), built from primitives every
    bound transform of `cure_jax.bounds` supports; and ``params``, the
    float initializers by name (a dict of JAX arrays).

  Raises:
    UnsupportedOnnxError: an operator, attribute or output that cannot be
      imported (the message names the operator and its node), or a graph
      without exactly one input and one output.
  """
  model = read_model(source)
  graph = model.graph
  sig = signature(model)
  fixed, params = _initializers(graph)
  nodes = []
  for index, node in enumerate(graph.node):
    attrs = _attributes(node)
    _check_node(node, index, attrs)
    nodes.append((node, index, attrs, OPERATORS[node.op_type]))
  _check_order(nodes, set(fixed) | set(params) | {sig.input_name}, sig)

  def apply_fn(params: Params, x):
    """The ONNX graph's output for ``x`` (see `load_onnx`)."""
    values: dict[str, Any] = dict(fixed)
    values.update(params)
    values[sig.input_name] = jnp.asarray(x)  # never a load-time constant
    for node, index, attrs, operator in nodes:
      inputs = [values[name] if name else None for name in node.input]
      try:
        outputs = operator.fn(inputs, attrs)
      except (OperatorError, TypeError, ValueError) as error:
        raise UnsupportedOnnxError(
          f"{_describe(node, index)} failed on inputs of shapes "
          f"{[None if v is None else np.shape(v) for v in inputs]}: {error}"
        ) from error
      for name, value in zip(node.output, outputs):
        if name:
          values[name] = value
    return values[sig.output_name]

  return apply_fn, params


def _check_order(nodes, available: set[str], sig: OnnxSignature) -> None:
  """Every node's inputs are produced before it (ONNX's topological order)."""
  available = set(available)
  for node, index, _, _ in nodes:
    missing = [name for name in node.input if name and name not in available]
    if missing:
      raise UnsupportedOnnxError(
        f"{_describe(node, index)} reads {missing}, which no earlier node, "
        "initializer or graph input produces (the graph is not in "
        "topological order or is incomplete)."
      )
    available.update(name for name in node.output if name)
  if sig.output_name not in available:
    raise UnsupportedOnnxError(
      f"no node produces the graph's output {sig.output_name!r}."
    )
