"""Export to ONNX and import back: same logits and bounds as the Flax model."""

import json

import flax.linen as nn
import jax
import numpy as np
import onnx
import onnxruntime
import pytest

from cure_jax import bounds
from cure_jax import export as export_module
from cure_jax.interchange import load_onnx, read_instances, read_vnnlib, to_onnx
from cure_jax.models import MLP, ConvNet, SmallCNN


def _with_random_statistics(variables, seed):
  """Perturbed parameters, and BatchNorm running statistics far from (0, 1)."""
  rng = np.random.default_rng(seed)

  def statistic(path, leaf):
    if path[-1].key == "mean":
      return rng.normal(0.0, 0.3, leaf.shape).astype(np.float32)
    return rng.uniform(0.3, 2.0, leaf.shape).astype(np.float32)

  params = jax.tree.map(
    lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32),
    variables["params"],
  )
  stats = jax.tree_util.tree_map_with_path(
    statistic, variables.get("batch_stats", {})
  )
  return {"params": params, "batch_stats": stats}


MODELS = {
  "small_cnn_bn": (
    SmallCNN(
      num_classes=4,
      conv_widths=(3, 4),
      conv_strides=(2, 1),
      kernel_size=3,
      dense_widths=(6,),
      mean=(0.4, 0.5),
      std=(0.3, 0.2),
    ),
    (9, 9, 2),
  ),
  "conv_net_padded": (
    ConvNet(
      num_classes=3,
      conv_widths=(3,),
      conv_strides=(2,),
      padding=((1, 0), (0, 1)),
      dense_widths=(),
      batch_norm=False,
    ),
    (6, 5, 1),
  ),
  "conv_net_same": (
    ConvNet(
      num_classes=3,
      conv_widths=(2,),
      conv_strides=(2,),
      padding="SAME",
      dense_widths=(4,),
    ),
    (7, 6, 1),
  ),
  "mlp_bn": (
    MLP(
      num_classes=3,
      hidden_widths=(7, 5),
      batch_norm=True,
      mean=(0.1, 0.2, 0.3),
      std=(0.5, 0.4, 0.3),
    ),
    (3, 4, 3),
  ),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request):
  model, shape = MODELS[request.param]
  images = (
    np.random.default_rng(1).uniform(size=(3,) + shape).astype(np.float32)
  )
  variables = model.init(jax.random.key(0), images, train=False)
  variables = _with_random_statistics(variables, seed=2)
  return (
    request.param,
    model,
    variables,
    images,
    to_onnx(model, variables, shape),
  )


def _flax_fn(model):
  return lambda v, x: model.apply(v, x, train=False)


def test_round_trip_logits_match_flax_and_onnxruntime(exported):
  _, model, variables, images, proto = exported
  expected = np.asarray(jax.jit(_flax_fn(model))(variables, images))
  assert np.ptp(expected) > 1e-2  # not a degenerate (all-dead) network
  nchw = images.transpose(0, 3, 1, 2)
  apply_fn, params = load_onnx(proto)
  imported = np.asarray(jax.jit(apply_fn)(params, nchw))
  session = onnxruntime.InferenceSession(
    proto.SerializeToString(), providers=["CPUExecutionProvider"]
  )
  runtime = session.run(None, {"input": nchw})[0]
  np.testing.assert_allclose(imported, expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(runtime, expected, atol=1e-5, rtol=0)


def test_graph_is_plain_and_batch_norm_is_folded(exported):
  name, _, _, _, proto = exported
  ops = [n.op_type for n in proto.graph.node]
  assert "BatchNormalization" not in ops
  assert set(ops) <= {
    "Sub",
    "Div",
    "Conv",
    "Relu",
    "Flatten",
    "Gemm",
    "Identity",
  }
  dims = proto.graph.input[0].type.tensor_type.shape.dim
  assert dims[0].dim_param == "N"
  if name != "mlp_bn":  # NCHW
    assert [d.dim_value for d in dims[1:]] == [
      MODELS[name][1][2],
      MODELS[name][1][0],
      MODELS[name][1][1],
    ]


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_round_trip_bounds_match(exported, method):
  _, model, variables, images, proto = exported
  transform = getattr(bounds, method)
  apply_fn, params = load_onnx(proto)
  nchw = images.transpose(0, 3, 1, 2)
  theirs = jax.jit(transform(_flax_fn(model)))(
    variables, bounds.LinfBall(images, 0.03, domain=(0.0, 1.0))
  )
  ours = jax.jit(transform(apply_fn))(
    params, bounds.LinfBall(nchw, 0.03, domain=(0.0, 1.0))
  )
  scale = 1e-5 * max(1.0, float(np.max(np.abs(theirs.upper))))
  np.testing.assert_allclose(ours.lower, theirs.lower, atol=scale, rtol=0)
  np.testing.assert_allclose(ours.upper, theirs.upper, atol=scale, rtol=0)


def test_other_models_and_norms_are_refused():
  with pytest.raises(ValueError, match="l2.*cannot be exported"):
    export_module.check_norms(["linf", "l2"])
  with pytest.raises(ValueError, match="needs an \\(H, W, C\\) input"):
    to_onnx(SmallCNN(), {"params": {}}, (784,))
  with pytest.raises(ValueError, match="exports ConvNet.*got Dense"):
    to_onnx(nn.Dense(3), {"params": {}}, (4,))


def _small_benchmark_model():
  model, shape = MODELS["small_cnn_bn"]
  images = (
    np.random.default_rng(3).uniform(size=(3,) + shape).astype(np.float32)
  )
  variables = _with_random_statistics(
    model.init(jax.random.key(0), images, train=False), seed=4
  )
  return model, variables, images


def test_write_benchmark_lays_out_a_vnncomp_folder(tmp_path):
  model, variables, images = _small_benchmark_model()
  labels = np.array([0, 3, 1])
  report = export_module.write_benchmark(
    model,
    variables,
    images,
    labels,
    str(tmp_path),
    eps=0.05,
    timeout=7,
    log=None,
  )
  assert report["instances"] == 3
  assert max(report["max_abs_logit_difference"].values()) <= 1e-5
  assert json.loads((tmp_path / "export.json").read_text()) == report
  instances = read_instances(str(tmp_path / "instances.csv"))
  assert [i.timeout for i in instances] == [7.0] * 3
  assert all(
    i.onnx_path == str(tmp_path / "onnx" / "model.onnx") for i in instances
  )
  onnx.checker.check_model(onnx.load(instances[0].onnx_path))
  for i, instance in enumerate(instances):
    prop = read_vnnlib(instance.vnnlib_path)
    (region,) = prop.regions
    x = images[i].transpose(2, 0, 1).reshape(-1).astype(np.float64)
    np.testing.assert_array_equal(region.lower, np.clip(x - 0.05, 0, 1))
    np.testing.assert_array_equal(region.upper, np.clip(x + 0.05, 0, 1))
    # One disjunct per other class: Y_j − Y_label ≥ 0.
    rows = {tuple(d.coeffs[0]) for d in region.disjuncts}
    eye = np.eye(4)
    assert rows == {
      tuple(eye[j] - eye[labels[i]]) for j in range(4) if j != labels[i]
    }


def test_write_benchmark_refuses_a_mismatch(tmp_path):
  model, variables, images = _small_benchmark_model()
  with pytest.raises(export_module.ExportMismatchError, match="differ"):
    export_module.write_benchmark(
      model,
      variables,
      images,
      np.zeros(3, int),
      str(tmp_path),
      eps=0.05,
      tolerance=-1.0,
      log=None,
    )
