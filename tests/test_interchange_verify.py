"""`cure_jax.verify` on hand-written networks and properties, and end to end
on an exported VNN-COMP folder."""

import csv
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cure_jax import verify
from cure_jax.verify import __main__ as verify_main

DECLARE = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
BOX = "(assert (>= X_0 -1.0))\n(assert (<= X_0 1.0))\n"


@pytest.fixture(scope="module")
def twin_relu(tmp_path_factory):
  """y = (relu(x) − relu(x), x): y_0 ≡ 0, but IBP and CROWN bound it by 1 on
  [−1, 1]; α-CROWN's optimized slope gets ≈ 0.5."""
  nodes = [
    helper.make_node("Relu", ["x"], ["r1"], name="relu_a"),
    helper.make_node("Relu", ["x"], ["r2"], name="relu_b"),
    helper.make_node("Sub", ["r1", "r2"], ["zero"], name="difference"),
    helper.make_node("Concat", ["zero", "x"], ["y"], name="outputs", axis=1),
  ]
  graph = helper.make_graph(
    nodes,
    "twin_relu",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  model.ir_version = 8
  path = tmp_path_factory.mktemp("twin") / "twin.onnx"
  onnx.save(model, path)
  return str(path), verify.load_network(str(path))


def _property(tmp_path, name, outputs):
  path = tmp_path / f"{name}.vnnlib"
  path.write_text(DECLARE + BOX + outputs)
  return str(path)


def _verify(twin_relu, vnnlib, **kwargs):
  onnx_path, network = twin_relu
  return verify.verify_instance(
    onnx_path, vnnlib, 30, network=network, **kwargs
  )


def test_falsified_property_gives_a_valid_counterexample(twin_relu, tmp_path):
  vnnlib = _property(
    tmp_path, "sat", "(assert (or (and (>= Y_1 0.9)) (and (>= Y_0 0.7))))"
  )
  result = _verify(twin_relu, vnnlib)
  assert result.result == verify.SAT and result.decided_by == "pgd"
  x, y = result.counterexample.inputs, result.counterexample.outputs
  assert -1.0 <= x[0] <= 1.0 and x[0] >= 0.9
  np.testing.assert_allclose(y, [0.0, x[0]], atol=1e-7)
  text = verify.result_text(result)
  assert text.startswith("sat\n((X_0 ")
  values = dict(re.findall(r"\((\w_\d+) ([^\s()]+)\)", text))
  assert set(values) == {"X_0", "Y_0", "Y_1"}
  assert float(values["X_0"]) == pytest.approx(x[0], abs=0)


def test_unsat_needs_alpha_crown_and_is_unknown_without_it(twin_relu, tmp_path):
  vnnlib = _property(
    tmp_path, "unsat", "(assert (or (and (>= Y_0 0.7)) (and (>= Y_1 1.5))))"
  )
  result = _verify(twin_relu, vnnlib)
  assert result.result == verify.UNSAT
  assert result.decided_by == "alpha_crown"
  assert verify.result_text(result) == "unsat\n"
  cheap = _verify(twin_relu, vnnlib, stages=("ibp", "crown"))
  assert cheap.result == verify.UNKNOWN and cheap.counterexample is None


def test_conjunction_is_infeasible_when_one_row_is(twin_relu, tmp_path):
  # Y_1 ≥ 0.5 is reachable, Y_1 ≤ −0.5 too, never both: IBP proves it
  # through the second row alone.
  vnnlib = _property(tmp_path, "conj", "(assert (and (>= Y_1 0.5) (>= Y_0 3)))")
  result = _verify(twin_relu, vnnlib)
  assert (result.result, result.decided_by) == (verify.UNSAT, "ibp")


def test_strict_rows_and_time_limit(twin_relu, tmp_path):
  # x = 1 reaches Y_1 = 1 but never Y_1 > 1; bounds cannot prove it either.
  vnnlib = _property(tmp_path, "strict", "(assert (> Y_1 1.0))")
  result = _verify(twin_relu, vnnlib)
  assert result.result == verify.UNKNOWN
  onnx_path, network = twin_relu
  expired = verify.verify_instance(onnx_path, vnnlib, 0.0, network=network)
  assert expired.result == verify.TIMEOUT
  assert expired.verify_seconds == 0.0


def test_single_instance_command_line(twin_relu, tmp_path, capsys):
  onnx_path, _ = twin_relu
  vnnlib = _property(tmp_path, "cli", "(assert (>= Y_1 0.5))")
  out, summary = tmp_path / "result.txt", tmp_path / "summary.csv"
  code = verify_main.main(
    [
      onnx_path,
      vnnlib,
      "--timeout",
      "20",
      "--out",
      str(out),
      "--summary",
      str(summary),
    ]
  )
  assert code == 0 and out.read_text().startswith("sat\n")
  (row,) = list(csv.DictReader(summary.open()))
  assert row["result"] == "sat" and float(row["prepare_seconds"]) > 0
  assert "sat" in capsys.readouterr().out
  wrong = tmp_path / "wrong.vnnlib"
  wrong.write_text(
    DECLARE.replace("Y_1", "Y_1 Real)\n(declare-const Y_2") + BOX
  )
  assert verify_main.main([onnx_path, str(wrong)]) == 2
  assert "3 outputs" in capsys.readouterr().err


def test_module_command_proves_unsat_in_its_own_process(twin_relu, tmp_path):
  # python -m cure_jax.verify: the script, in a process that keeps its
  # freed memory (cure_jax.host_memory), to the same answer as in-process.
  onnx_path, _ = twin_relu
  vnnlib = _property(
    tmp_path, "unsat", "(assert (or (and (>= Y_0 0.7)) (and (>= Y_1 1.5))))"
  )
  out = tmp_path / "result.txt"
  done = subprocess.run(
    [sys.executable, "-m", "cure_jax.verify", onnx_path, vnnlib]
    + ["--out", str(out)],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert out.read_text() == "unsat\n"


def test_exported_benchmark_end_to_end(tmp_path, capsys):
  """Export a small CNN with BatchNorm, then verify the folder in one call."""
  import jax  # pylint: disable=g-import-not-at-top

  from cure_jax import export as export_module  # pylint: disable=g-import-not-at-top
  from cure_jax.interchange import read_instances, read_vnnlib  # pylint: disable=g-import-not-at-top
  from cure_jax.models import SmallCNN  # pylint: disable=g-import-not-at-top

  model = SmallCNN(
    num_classes=3,
    conv_widths=(2,),
    conv_strides=(2,),
    kernel_size=3,
    dense_widths=(5,),
  )
  images = (
    np.random.default_rng(0).uniform(size=(2, 7, 7, 1)).astype(np.float32)
  )
  variables = model.init(jax.random.key(0), images, train=False)
  logits = np.asarray(model.apply(variables, images, train=False))
  labels = logits.argmax(1)
  # Point 0 at a tiny radius (robust); point 1 with a label its own logits
  # already contradict (the box's centre is a counterexample to find).
  wrong = (labels[1] + 1) % 3
  export_module.write_benchmark(
    model, variables, images[:1], labels[:1], str(tmp_path), eps=1e-5, log=None
  )
  big = tmp_path / "big"
  export_module.write_benchmark(
    model, variables, images[1:], [wrong], str(big), eps=0.05, log=None
  )
  csv_path = tmp_path / "instances.csv"
  csv_path.write_text(
    csv_path.read_text()
    + "onnx/model.onnx,big/specs/prop_0_linf_0.05.vnnlib,30\n"
  )
  assert verify_main.main(["--instances", str(csv_path)]) == 0
  rows = list(csv.DictReader((tmp_path / "results" / "summary.csv").open()))
  assert [r["result"] for r in rows] == ["unsat", "sat"]
  assert all(float(r["verify_seconds"]) >= 0 for r in rows)
  # The network was loaded and compiled for the first instance only.
  assert float(rows[0]["prepare_seconds"]) > float(rows[1]["prepare_seconds"])
  files = sorted((tmp_path / "results").glob("*.txt"))
  assert [f.read_text().split("\n")[0] for f in files] == ["unsat", "sat"]
  # The counterexample lies in the box and misclassifies by the ONNX model.
  text = files[1].read_text()
  values = dict(re.findall(r"\((\w_\d+) ([^\s()]+)\)", text))
  x = np.array([float(values[f"X_{i}"]) for i in range(49)])
  y = np.array([float(values[f"Y_{j}"]) for j in range(3)])
  (region,) = read_vnnlib(read_instances(str(csv_path))[1].vnnlib_path).regions
  assert np.all(x >= region.lower) and np.all(x <= region.upper)
  flax_logits = np.asarray(
    model.apply(
      variables, x.reshape(1, 1, 7, 7).transpose(0, 2, 3, 1), train=False
    )
  )[0]
  np.testing.assert_allclose(y, flax_logits, atol=1e-5)
  assert np.max(np.delete(y, wrong)) >= y[wrong]
  assert "2 instances" in capsys.readouterr().out
  # The exported layout: properties under specs/.
  assert [p.name for p in (tmp_path / "specs").iterdir()] == [
    "prop_0_linf_1e-05.vnnlib"
  ]
  assert not (tmp_path / "vnnlib").exists()
  # The exported CNN is a ReLU chain: branch and bound alone decides it.
  bab_dir = tmp_path / "bab_results"
  args = ["--instances", str(csv_path), "--out_dir", str(bab_dir)]
  assert verify_main.main(args + ["--stages", "bab", "--bab_batch", "4"]) == 0
  rows = list(csv.DictReader((bab_dir / "summary.csv").open()))
  assert [(r["result"], r["decided_by"]) for r in rows] == [
    ("unsat", "bab"),
    ("sat", "pgd"),
  ]


def test_benchmark_reports_unverifiable_instances_and_goes_on(
  twin_relu, tmp_path
):
  onnx_path, _ = twin_relu
  softmax = helper.make_model(
    helper.make_graph(
      [helper.make_node("Softmax", ["x"], ["y"], name="probabilities")],
      "softmax",
      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    ),
    opset_imports=[helper.make_opsetid("", 17)],
  )
  onnx.save(softmax, tmp_path / "softmax.onnx")
  _property(tmp_path, "reach", "(assert (>= Y_1 0.5))")
  (tmp_path / "twin.onnx").write_bytes(open(onnx_path, "rb").read())
  (tmp_path / "instances.csv").write_text(
    "softmax.onnx,reach.vnnlib,5\ntwin.onnx,missing.vnnlib,5\n"
    "twin.onnx,reach.vnnlib,5\n"
  )
  results = verify.verify_benchmark(str(tmp_path / "instances.csv"))
  assert [r.result for r in results] == ["error", "error", "sat"]
  assert "'Softmax' at node 'probabilities'" in results[0].message
  assert "missing.vnnlib" in results[1].message
  rows = list(csv.DictReader((tmp_path / "results" / "summary.csv").open()))
  assert [r["result"] for r in rows] == ["error", "error", "sat"]
  written = sorted(p.name for p in (tmp_path / "results").glob("*.txt"))
  assert written == [
    "0000_softmax_reach.txt",
    "0001_twin_missing.txt",
    "0002_twin_reach.txt",
  ]


def test_network_without_a_batch_axis_is_refused(tmp_path):
  graph = helper.make_graph(
    [helper.make_node("Relu", ["x"], ["y"], name="relu")],
    "flat",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])],
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  onnx.save(model, tmp_path / "flat.onnx")
  with pytest.raises(verify.UnsupportedOnnxError, match=r"\(5,\) has no batch"):
    verify.load_network(str(tmp_path / "flat.onnx"))
