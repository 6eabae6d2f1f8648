"""`to_onnx`: a cure_jax classifier in eval mode as a plain ONNX graph.

The graph is written node by node with ``onnx.helper`` from the Flax
variables of a `ConvNet` (and its subclasses `SmallCNN`, `CNN7`) or an `MLP`:

* the input is NCHW (ONNX's layout; the Flax model is NHWC) with a symbolic
  batch axis, pixels in [0, 1];
* input normalization ``(x − mean) / std`` stays a ``Sub`` and a ``Div`` by
  per-channel constants (folding it into a padded convolution would change
  the border, where the model pads the normalized image with zeros);
* every BatchNorm is folded into the affine layer before it: with
  ``m = γ / √(σ² + ε)``, ``W' = W · m`` (per output channel) and
  ``b' = (b − μ) · m + β`` (computed in float64, stored as float32);
* Flax flattens features in (H, W, C) order and ONNX's ``Flatten`` of NCHW in
  (C, H, W) order, so the rows of the first dense kernel are permuted to
  match, which keeps the graph free of transposes;
* convolutions become ``Conv`` with explicit pads, dense layers ``Gemm``,
  ReLUs ``Relu``.
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import numpy as np

from cure_jax.interchange.onnx_import import require_onnx
from cure_jax.models.batch_norm import BatchNorm
from cure_jax.models.cnn import OUTPUT_LAYER, ConvNet
from cure_jax.models.mlp import MLP
from cure_jax.types import PyTree

OPSET = 17
IR_VERSION = 8
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class _Graph:
  """Accumulates nodes and initializers; each `add` returns its output name."""

  def __init__(self):
    self.nodes, self.initializers = [], []

  def constant(self, name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper  # pylint: disable=g-import-not-at-top

    self.initializers.append(
      numpy_helper.from_array(np.asarray(value, np.float32), name)
    )
    return name

  def add(self, op: str, inputs: Sequence[str], name: str, **attrs) -> str:
    import onnx  # pylint: disable=g-import-not-at-top

    output = f"{name}_out"
    self.nodes.append(
      onnx.helper.make_node(op, list(inputs), [output], name=name, **attrs)
    )
    return output


def _fold_batch_norm(
  kernel: np.ndarray,
  bias: np.ndarray | None,
  variables: PyTree,
  layer: str,
) -> tuple[np.ndarray, np.ndarray]:
  """(W·m, (b − μ)·m + β) with m = γ / √(σ² + ε) over the last kernel axis."""
  bn = f"{layer}_bn"
  params, stats = variables["params"][bn], variables["batch_stats"][bn]
  scale, shift = np.float64(params["scale"]), np.float64(params["bias"])
  mean, var = np.float64(stats["mean"]), np.float64(stats["var"])
  multiplier = scale / np.sqrt(var + BatchNorm.epsilon)
  bias = np.zeros_like(mean) if bias is None else np.float64(bias)
  return kernel * multiplier, (bias - mean) * multiplier + shift


def _affine(variables: PyTree, layer: str, batch_norm: bool):
  """The layer's float64 (kernel, bias), its BatchNorm folded in."""
  params = variables["params"][layer]
  kernel = np.asarray(params["kernel"], np.float64)
  bias = params.get("bias")
  bias = None if bias is None else np.asarray(bias, np.float64)
  if batch_norm:
    return _fold_batch_norm(kernel, bias, variables, layer)
  if bias is None:
    bias = np.zeros(kernel.shape[-1])
  return kernel, bias


def _conv_pads(padding, size, kernel: int, stride: int):
  """Flax padding of one convolution as ONNX pads [top, left, bottom, right]."""
  if isinstance(padding, str):
    if padding.upper() == "VALID":
      return [0, 0, 0, 0]
    if padding.upper() == "SAME":  # lax's: the larger half at the end
      pairs = []
      for n in size:
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pairs.append((total // 2, total - total // 2))
      return [pairs[0][0], pairs[1][0], pairs[0][1], pairs[1][1]]
    raise ValueError(f"padding {padding!r} has no ONNX equivalent.")
  if isinstance(padding, int):
    return [padding] * 4
  (top, bottom), (left, right) = padding
  return [top, left, bottom, right]


def _normalize(graph: _Graph, x: str, model, channels: int, rank: int) -> str:
  if model.mean is None and model.std is None:
    return x
  if model.mean is None or model.std is None or len(model.mean) != channels:
    raise ValueError(
      f"{type(model).__name__} normalization mean={model.mean}, "
      f"std={model.std} does not fit {channels} input channels."
    )
  shape = (1, channels) + (1,) * (rank - 2)
  mean = graph.constant("input_mean", np.reshape(model.mean, shape))
  std = graph.constant("input_std", np.reshape(model.std, shape))
  return graph.add(
    "Div", [graph.add("Sub", [x, mean], "normalize_sub"), std], "normalize_div"
  )


def _dense(graph: _Graph, x: str, kernel, bias, name: str, relu: bool) -> str:
  y = graph.add(
    "Gemm",
    [x, graph.constant(f"{name}_W", kernel), graph.constant(f"{name}_b", bias)],
    name,
  )
  return graph.add("Relu", [y], f"{name}_relu") if relu else y


def _chw_rows(kernel: np.ndarray, feature_shape: Sequence[int]) -> np.ndarray:
  """Rows of a dense kernel reordered from (H, W, C) to (C, H, W) features."""
  if len(feature_shape) != 3:
    return kernel
  h, w, c = feature_shape
  out = kernel.shape[-1]
  return kernel.reshape(h, w, c, out).transpose(2, 0, 1, 3).reshape(-1, out)


def _dense_stack(graph, x, variables, model, widths, feature_shape) -> str:
  """Flatten, hidden dense layers (+ folded BN, ReLU), then the logits."""
  x = graph.add("Flatten", [x], "flatten", axis=1)
  layers = [f"dense_{i}" for i in range(len(widths))] + [OUTPUT_LAYER]
  for i, layer in enumerate(layers):
    hidden = layer != OUTPUT_LAYER
    kernel, bias = _affine(variables, layer, model.batch_norm and hidden)
    if i == 0:
      kernel = _chw_rows(kernel, feature_shape)
    x = _dense(graph, x, kernel, bias, layer, relu=hidden)
  return x


def _conv_net(graph, x, variables, model: ConvNet, shape) -> str:
  """ConvNet: normalize, convolutions, then `_dense_stack`."""
  h, w, c = shape
  x = _normalize(graph, x, model, c, 4)
  k = model.kernel_size
  for i, (width, stride) in enumerate(
    zip(model.conv_widths, model.conv_strides)
  ):
    layer = f"conv_{i}"
    kernel, bias = _affine(variables, layer, model.batch_norm)
    pads = _conv_pads(model.padding, (h, w), k, stride)
    x = graph.add(
      "Conv",
      [
        x,
        graph.constant(f"{layer}_W", kernel.transpose(3, 2, 0, 1)),
        graph.constant(f"{layer}_b", bias),
      ],
      layer,
      kernel_shape=[k, k],
      strides=[stride, stride],
      pads=pads,
    )
    x = graph.add("Relu", [x], f"{layer}_relu")
    h = (h + pads[0] + pads[2] - k) // stride + 1
    w = (w + pads[1] + pads[3] - k) // stride + 1
    c = width
  return _dense_stack(graph, x, variables, model, model.dense_widths, (h, w, c))


def _mlp(graph, x, variables, model: MLP, shape) -> str:
  rank = len(shape) + 1
  channels = shape[-1]
  x = _normalize(graph, x, model, channels, rank)
  return _dense_stack(graph, x, variables, model, model.hidden_widths, shape)


def onnx_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
  """Per-example ONNX input shape: (C, H, W) for an (H, W, C) image."""
  if len(input_shape) == 3:
    h, w, c = input_shape
    return (c, h, w)
  return tuple(input_shape)


def to_onnx(
  model: nn.Module, variables: PyTree, input_shape: Sequence[int]
) -> Any:
  """The eval-mode model as an ONNX graph (see the module docstring).

  Args:
    model: a `ConvNet` (or `SmallCNN`, `CNN7`) or `MLP`.
    variables: its ``{'params', 'batch_stats'}``.
    input_shape: one example's Flax input shape, e.g. (28, 28, 1) (NHWC
      without the batch) or (D,).

  Returns:
    An ``onnx.ModelProto`` (opset 17) with input ``'input'`` of shape
    ``[N, C, H, W]`` (or ``[N, D]``) and output ``'logits'`` ``[N, K]``.

  Raises:
    ValueError: the model is of another class, or its padding or
      normalization has no exact ONNX counterpart here.
  """
  onnx = require_onnx()
  input_shape = tuple(int(s) for s in input_shape)
  graph = _Graph()
  if isinstance(model, ConvNet):
    if len(input_shape) != 3:
      raise ValueError(
        f"{type(model).__name__} needs an (H, W, C) input shape."
      )
    logits = _conv_net(graph, INPUT_NAME, variables, model, input_shape)
  elif isinstance(model, MLP):
    logits = _mlp(graph, INPUT_NAME, variables, model, input_shape)
  else:
    raise ValueError(
      f"to_onnx exports ConvNet, SmallCNN, CNN7 and MLP models; got "
      f"{type(model).__name__}."
    )
  graph.nodes.append(onnx.helper.make_node("Identity", [logits], [OUTPUT_NAME]))
  num_classes = int(variables["params"][OUTPUT_LAYER]["kernel"].shape[-1])
  tensor = onnx.TensorProto.FLOAT
  onnx_graph = onnx.helper.make_graph(
    graph.nodes,
    f"cure_jax_{type(model).__name__}",
    [
      onnx.helper.make_tensor_value_info(
        INPUT_NAME, tensor, ["N", *onnx_input_shape(input_shape)]
      )
    ],
    [
      onnx.helper.make_tensor_value_info(
        OUTPUT_NAME, tensor, ["N", num_classes]
      )
    ],
    graph.initializers,
  )
  exported = onnx.helper.make_model(
    onnx_graph,
    producer_name="cure_jax",
    opset_imports=[onnx.helper.make_opsetid("", OPSET)],
    doc_string=(
      "Eval-mode classifier; input "
      f"{'NCHW ' if len(input_shape) == 3 else ''}pixels in [0, 1], "
      f"{math.prod(input_shape)} values per example; BatchNorm folded."
    ),
  )
  exported.ir_version = IR_VERSION
  onnx.checker.check_model(exported)
  return exported
