"""`load_onnx` operator by operator against onnxruntime, and under the bounds."""

import jax
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from cure_jax import bounds
from cure_jax.interchange import OPERATORS, UnsupportedOnnxError, load_onnx

RNG = np.random.default_rng(0)


def _tensor(name, value):
  return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, input_shape, initializers=(), output="y", opset=17):
  graph = helper.make_graph(
    nodes,
    "test",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
    [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
    list(initializers),
  )
  model = helper.make_model(
    graph, opset_imports=[helper.make_opsetid("", opset)]
  )
  model.ir_version = 8
  return model


def _runtime(model, x):
  session = onnxruntime.InferenceSession(
    model.SerializeToString(), providers=["CPUExecutionProvider"]
  )
  return session.run(None, {"x": x})[0]


def _assert_matches_runtime(model, x, atol=1e-5):
  apply_fn, params = load_onnx(model)
  expected = _runtime(model, x)
  actual = np.asarray(apply_fn(params, x))
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, atol=atol, rtol=1e-5)


def _random(*shape):
  return RNG.normal(size=shape).astype(np.float32)


def _every_operator_model():
  """A small CNN touching every operator of `OPERATORS`."""
  f = np.float32
  inits = [
    _tensor("c2", np.full((1, 2, 1, 1), 0.5, f)),
    _tensor("c3", _random(1, 2, 1, 1)),
    _tensor("c4", _random(2, 1, 1)),
    _tensor("W1", 0.5 * _random(4, 2, 3, 3)),
    _tensor("B1", _random(4)),
    _tensor("Wg", 0.5 * _random(4, 2, 3, 3)),
    _tensor("bn_scale", _random(4)),
    _tensor("bn_bias", _random(4)),
    _tensor("bn_mean", _random(4)),
    _tensor("bn_var", RNG.uniform(0.5, 2.0, 4).astype(f)),
    _tensor("Wt", 0.5 * _random(4, 3, 2, 2)),
    _tensor("Bt", _random(3)),
    _tensor("clip_low", np.array(-0.2, f)),
    _tensor("pads", np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64)),
    _tensor("pad_value", np.array(0.25, f)),
    _tensor("starts", np.array([1, -1], np.int64)),
    _tensor("ends", np.array([100, 0], np.int64)),
    _tensor("slice_axes", np.array([2, 3], np.int64)),
    _tensor("steps", np.array([2, -1], np.int64)),
    _tensor("squeeze_axes", np.array([2, 3], np.int64)),
    _tensor("unsqueeze_axes", np.array([1], np.int64)),
    _tensor("shape", np.array([0, -1], np.int64)),
    _tensor("Wgemm", 0.1 * _random(5, 216)),
    _tensor("bgemm", _random(5)),
    _tensor("Wmm", _random(6, 5)),
    _tensor("gather_index", np.array([1], np.int64)),
    _tensor("ones", np.ones((1,), np.int64)),
  ]
  node = helper.make_node
  c1 = helper.make_tensor("c1v", TensorProto.FLOAT, [1, 2, 1, 1], [0.1, -0.2])
  nodes = [
    node("Constant", [], ["c1"], name="constant", value=c1),
    node("Sub", ["x", "c1"], ["a"], name="sub"),
    node("Div", ["a", "c2"], ["b"], name="div"),
    node("Mul", ["b", "c3"], ["c"], name="mul"),
    node("Add", ["c", "c4"], ["d"], name="add"),
    node("Conv", ["d", "W1", "B1"], ["e"], name="conv", pads=[1, 1, 1, 1]),
    node(
      "Conv",
      ["e", "Wg"],
      ["f"],
      name="grouped_conv",
      group=2,
      strides=[1, 1],
      dilations=[2, 1],
      pads=[2, 1, 2, 1],
    ),
    node(
      "BatchNormalization",
      ["f", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
      ["g"],
      name="bn",
      epsilon=1e-3,
    ),
    node("LeakyRelu", ["g"], ["h"], name="leaky", alpha=0.1),
    node(
      "MaxPool",
      ["h"],
      ["i"],
      name="maxpool",
      kernel_shape=[2, 2],
      strides=[1, 1],
      pads=[0, 0, 1, 1],
    ),
    node(
      "AveragePool",
      ["i"],
      ["j"],
      name="avgpool",
      kernel_shape=[3, 3],
      strides=[2, 2],
      pads=[1, 1, 1, 1],
    ),
    node(
      "ConvTranspose", ["j", "Wt", "Bt"], ["k"], name="deconv", strides=[2, 2]
    ),
    node("Relu", ["k"], ["l"], name="relu"),
    node("Sigmoid", ["l"], ["m1"], name="sigmoid"),
    node("Tanh", ["k"], ["m2"], name="tanh"),
    node("Clip", ["m2", "clip_low"], ["m3"], name="clip"),
    node("Concat", ["m1", "m3"], ["cat"], name="concat", axis=1),
    node("Pad", ["cat", "pads", "pad_value"], ["p"], name="pad"),
    node(
      "Slice",
      ["p", "starts", "ends", "slice_axes", "steps"],
      ["q"],
      name="slice",
    ),
    node("Transpose", ["q"], ["r"], name="transpose", perm=[0, 1, 3, 2]),
    node("Dropout", ["r"], ["r2"], name="dropout"),
    node("Flatten", ["r2"], ["u"], name="flatten"),
    node(
      "Gemm", ["u", "Wgemm", "bgemm"], ["v"], name="gemm", transB=1, alpha=0.5
    ),
    node("GlobalAveragePool", ["r"], ["s"], name="gap"),
    node("GlobalMaxPool", ["r"], ["s2"], name="gmp"),
    node("Sub", ["s", "s2"], ["s3"], name="sub_pools"),
    node("Squeeze", ["s3", "squeeze_axes"], ["t"], name="squeeze"),
    node("Reshape", ["t", "shape"], ["w"], name="reshape"),
    node("MatMul", ["w", "Wmm"], ["z"], name="matmul"),
    node("Neg", ["z"], ["z2"], name="neg"),
    node("Add", ["v", "z2"], ["y1"], name="add_heads"),
    node("Shape", ["y1"], ["y1_shape"], name="shape"),
    node("Gather", ["y1_shape", "gather_index"], ["width"], name="gather"),
    node(
      "Concat", ["ones", "width"], ["flat_shape"], name="concat_shape", axis=0
    ),
    node(
      "Cast",
      ["flat_shape"],
      ["flat_shape64"],
      name="cast",
      to=TensorProto.INT64,
    ),
    node("Unsqueeze", ["y1", "unsqueeze_axes"], ["y2"], name="unsqueeze"),
    node("Identity", ["y2"], ["y3"], name="identity"),
    node("Reshape", ["y3", "flat_shape64"], ["y"], name="reshape_out"),
  ]
  return _model(nodes, [1, 2, 7, 7], inits)


def test_every_operator_is_exercised():
  model = _every_operator_model()
  used = {n.op_type for n in model.graph.node}
  assert used == set(OPERATORS)


def test_every_operator_network_matches_onnxruntime():
  x = RNG.uniform(size=(1, 2, 7, 7)).astype(np.float32)
  _assert_matches_runtime(_every_operator_model(), x)


TRANSFORMS = {
  "ibp": lambda f: jax.jit(bounds.ibp(f)),
  "crown_ibp": lambda f: jax.jit(bounds.crown_ibp(f)),
  "crown": lambda f: jax.jit(bounds.crown(f)),
  # Over IBP intermediates: CROWN's are tested above, and each costs a
  # backward pass per layer to compile.
  "alpha_crown": lambda f: jax.jit(
    bounds.alpha_crown(f, steps=2, intermediate="ibp", unroll=1)
  ),
}


@pytest.mark.parametrize("method", sorted(TRANSFORMS))
def test_bound_transform_traces_the_network_soundly(method):
  apply_fn, params = load_onnx(_every_operator_model())
  x = RNG.uniform(size=(1, 2, 7, 7)).astype(np.float32)
  box = bounds.Box(x - 0.02, x + 0.02)
  noise = RNG.uniform(-0.02, 0.02, size=(64,) + x.shape).astype(np.float32)
  outputs = jax.vmap(lambda s: apply_fn(params, s))(x + noise)
  result = TRANSFORMS[method](apply_fn)(params, box)
  lower, upper = np.asarray(result.lower), np.asarray(result.upper)
  assert np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))
  assert np.all(lower <= upper)
  assert np.all(outputs >= lower - 1e-5)
  assert np.all(outputs <= upper + 1e-5)


def _single(op, x_shape, inits=(), inputs=None, opset=17, **attrs):
  names = ["x"] + [t.name for t in inits] if inputs is None else inputs
  node = helper.make_node(op, names, ["y"], name=f"{op.lower()}_node", **attrs)
  return _model([node], list(x_shape), inits, opset=opset)


SINGLE_OPERATOR_CASES = {
  "conv_same_upper": lambda: _single(
    "Conv",
    (2, 3, 7, 6),
    [_tensor("w", _random(4, 3, 3, 2))],
    auto_pad="SAME_UPPER",
    strides=[2, 2],
  ),
  "conv_same_lower_1d": lambda: _single(
    "Conv", (2, 3, 9), [_tensor("w", _random(2, 3, 4))], auto_pad="SAME_LOWER"
  ),
  "conv_depthwise": lambda: _single(
    "Conv", (1, 4, 6, 6), [_tensor("w", _random(4, 1, 3, 3))], group=4
  ),
  "conv_transpose_padded": lambda: _single(
    "ConvTranspose",
    (1, 2, 4, 5),
    [_tensor("w", _random(2, 3, 3, 3))],
    strides=[2, 3],
    pads=[1, 0, 1, 1],
    output_padding=[1, 0],
  ),
  "conv_transpose_grouped_dilated": lambda: _single(
    "ConvTranspose",
    (1, 4, 4, 4),
    [_tensor("w", _random(4, 3, 2, 3)), _tensor("b", _random(6))],
    group=2,
    dilations=[2, 1],
  ),
  "maxpool_ceil": lambda: _single(
    "MaxPool", (1, 2, 7, 8), kernel_shape=[3, 2], strides=[2, 3], ceil_mode=1
  ),
  "maxpool_dilated_padded": lambda: _single(
    "MaxPool",
    (1, 2, 7, 7),
    kernel_shape=[2, 2],
    dilations=[2, 2],
    pads=[1, 0, 0, 1],
  ),
  "maxpool_same_lower": lambda: _single(
    "MaxPool",
    (1, 2, 7, 6),
    kernel_shape=[3, 2],
    strides=[2, 2],
    auto_pad="SAME_LOWER",
  ),
  "avgpool_include_pad_ceil": lambda: _single(
    "AveragePool",
    (1, 2, 7, 8),
    kernel_shape=[3, 3],
    strides=[2, 2],
    pads=[1, 1, 1, 1],
    count_include_pad=1,
    ceil_mode=1,
  ),
  "avgpool_exclude_pad": lambda: _single(
    "AveragePool", (1, 2, 6, 6), kernel_shape=[3, 3], pads=[1, 0, 1, 2]
  ),
  "gemm_transposed_a": lambda: _single(
    "Gemm",
    (4, 3),
    [_tensor("b", _random(4, 5)), _tensor("c", _random(5))],
    transA=1,
    beta=0.5,
  ),
  "pad_reflect": lambda: _single(
    "Pad",
    (1, 2, 4, 4),
    [_tensor("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))],
    mode="reflect",
  ),
  "pad_edge_axes": lambda: _single(
    "Pad",
    (1, 2, 4, 4),
    [
      _tensor("pads", np.array([1, 2], np.int64)),
      _tensor("value", np.array(0.0, np.float32)),
      _tensor("axes", np.array([-1], np.int64)),
    ],
    mode="edge",
    opset=18,
  ),
  "pad_wrap": lambda: _single(
    "Pad",
    (1, 2, 4, 4),
    [_tensor("pads", np.array([0, 0, 2, 1, 0, 0, 1, 3], np.int64))],
    mode="wrap",
    opset=19,
  ),
  "pad_negative_crop": lambda: _single(
    "Pad",
    (1, 2, 5, 5),
    [_tensor("pads", np.array([0, 0, -1, 1, 0, 0, 1, -2], np.int64))],
  ),
  "flatten_axis_2": lambda: _single("Flatten", (2, 3, 4, 5), axis=2),
  "transpose_default": lambda: _single("Transpose", (2, 3, 4)),
  "squeeze_all": lambda: _single("Squeeze", (1, 3, 1, 2)),
  "slice_default_axes": lambda: _single(
    "Slice",
    (3, 6),
    [
      _tensor("starts", np.array([1, -4], np.int64)),
      _tensor("ends", np.array([3, -1], np.int64)),
    ],
  ),
  "clip_max_only": lambda: _single(
    "Clip",
    (2, 5),
    [_tensor("high", np.array(0.3, np.float32))],
    inputs=["x", "", "high"],
  ),
  "leaky_relu_default": lambda: _single("LeakyRelu", (2, 5)),
}


@pytest.mark.parametrize("case", sorted(SINGLE_OPERATOR_CASES))
def test_single_operator_matches_onnxruntime(case):
  model = SINGLE_OPERATOR_CASES[case]()
  shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
  _assert_matches_runtime(model, _random(*shape))


def test_unsupported_operator_names_operator_and_node():
  nodes = [
    helper.make_node("Relu", ["x"], ["a"], name="first"),
    helper.make_node("Softmax", ["a"], ["y"], name="probabilities"),
  ]
  with pytest.raises(UnsupportedOnnxError) as error:
    load_onnx(_model(nodes, [1, 4]))
  message = str(error.value)
  assert "'Softmax'" in message and "'probabilities'" in message
  assert "#1" in message and "Relu" in message  # lists what is supported


def test_unknown_attribute_and_extra_output_are_errors():
  conv = helper.make_node(
    "Conv", ["x", "w"], ["y"], name="odd_conv", pads=[0, 0, 0, 0], foo=3
  )
  with pytest.raises(UnsupportedOnnxError, match="odd_conv.*'foo'"):
    load_onnx(_model([conv], [1, 1, 3, 3], [_tensor("w", _random(1, 1, 2, 2))]))
  pool = helper.make_node(
    "MaxPool", ["x"], ["y", "indices"], name="argmax_pool", kernel_shape=[2]
  )
  with pytest.raises(UnsupportedOnnxError, match="argmax_pool.*indices"):
    load_onnx(_model([pool], [1, 1, 4]))
  custom = helper.make_node("Relu", ["x"], ["y"], name="mine", domain="com.me")
  with pytest.raises(UnsupportedOnnxError, match="domain 'com.me'"):
    load_onnx(_model([custom], [1, 4]))


def test_shape_operand_computed_from_the_input_is_an_error():
  nodes = [
    helper.make_node("Cast", ["x"], ["y"], name="to_int", to=TensorProto.INT64),
  ]
  apply_fn, params = load_onnx(_model(nodes, [2]))
  with pytest.raises(UnsupportedOnnxError, match="'to_int'.*float types"):
    apply_fn(params, np.ones(2, np.float32))
  nodes = [
    helper.make_node("Reshape", ["x", "x"], ["y"], name="self_reshape"),
  ]
  apply_fn, params = load_onnx(_model(nodes, [2]))
  with pytest.raises(UnsupportedOnnxError, match="self_reshape.*known when"):
    apply_fn(params, np.ones(2, np.float32))


def test_graph_out_of_order_is_an_error():
  nodes = [
    helper.make_node("Relu", ["a"], ["y"], name="late"),
    helper.make_node("Relu", ["x"], ["a"], name="early"),
  ]
  with pytest.raises(UnsupportedOnnxError, match="'late'.*topological"):
    load_onnx(_model(nodes, [1, 4]))


def test_params_are_the_float_initializers_and_jit_matches_eager():
  model = _every_operator_model()
  apply_fn, params = load_onnx(model)
  floats = {
    t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT
  }
  assert set(params) == floats
  x = RNG.uniform(size=(1, 2, 7, 7)).astype(np.float32)
  np.testing.assert_allclose(
    jax.jit(apply_fn)(params, x), apply_fn(params, x), atol=1e-6
  )


def test_loads_from_a_file(tmp_path):
  model = _single("Relu", (1, 3))
  path = tmp_path / "relu.onnx"
  onnx.save(model, path)
  apply_fn, params = load_onnx(str(path))
  np.testing.assert_array_equal(
    apply_fn(params, np.array([[-1.0, 0.0, 2.0]], np.float32)), [[0, 0, 2]]
  )
