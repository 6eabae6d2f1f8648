"""Branch and bound over a box with disjunctive specifications
(cure_jax/certify/bab_search.py) and as the verify command's last stage
(cure_jax/verify/bab_stage.py), on tiny ReLU networks made here."""

import csv

import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cure_jax import verify
from cure_jax.bounds import splits
from cure_jax.certify import bab_search
from cure_jax.interchange import read_vnnlib
from cure_jax.verify import __main__ as verify_main

BOUND_STAGES = ("ibp", "crown_ibp", "crown", "alpha_crown")


def _random_mlp(seed, widths):
  """[(W [out, in], b [out])] with ReLUs between, float32 values."""
  rng = np.random.default_rng(seed)
  return [
    (
      np.float32(rng.normal(size=(o, i)) / np.sqrt(i)),
      np.float32(0.3 * rng.normal(size=o)),
    )
    for i, o in zip(widths[:-1], widths[1:])
  ]


def _forward(layers, x):
  """float64 outputs of [P, n_0] inputs."""
  x = np.asarray(x, np.float64)
  for k, (w, b) in enumerate(layers):
    x = x @ np.float64(w).T + b
    if k < len(layers) - 1:
      x = np.maximum(x, 0.0)
  return x


def _onnx_mlp(layers, path) -> str:
  """The MLP as Gemm and Relu nodes, input [1, n_0]."""
  nodes, weights, name = [], [], "x"
  for k, (w, b) in enumerate(layers):
    weights += [
      numpy_helper.from_array(np.float32(w), f"w{k}"),
      numpy_helper.from_array(np.float32(b), f"b{k}"),
    ]
    out = "y" if k == len(layers) - 1 else f"z{k}"
    nodes.append(
      helper.make_node("Gemm", [name, f"w{k}", f"b{k}"], [out], transB=1)
    )
    if out != "y":
      name = f"a{k}"
      nodes.append(helper.make_node("Relu", [out], [name]))
  n_in, n_out = layers[0][0].shape[1], layers[-1][1].size
  graph = helper.make_graph(
    nodes,
    "mlp",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])],
    weights,
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  model.ir_version = 8
  onnx.save(model, path)
  return str(path)


def _vnnlib(tmp_path, name, lower, upper, num_outputs, assertion) -> str:
  lines = [f"(declare-const X_{i} Real)" for i in range(len(lower))]
  lines += [f"(declare-const Y_{j} Real)" for j in range(num_outputs)]
  for i, (lo, hi) in enumerate(zip(lower, upper)):
    lines += [f"(assert (>= X_{i} {lo!r}))", f"(assert (<= X_{i} {hi!r}))"]
  path = tmp_path / f"{name}.vnnlib"
  path.write_text("\n".join(lines + [assertion]) + "\n")
  return str(path)


def _check_counterexample(result, layers, lower, upper, vnnlib):
  """The reported point lies in the box and the float64 forward pass
  satisfies every row of the disjunct it names."""
  found = result.counterexample
  x = np.asarray(found.inputs, np.float64)
  assert np.all(x >= lower) and np.all(x <= upper)
  y = _forward(layers, x[None])[0]
  np.testing.assert_allclose(found.outputs, y, atol=1e-5)
  (region,) = read_vnnlib(vnnlib).regions
  spec = region.disjuncts[found.disjunct]
  assert np.all(spec.coeffs @ y + spec.offsets >= -1e-6)


# ---------------------------------------------------------------------------
# Exact reference for one input: the network is affine between breakpoints.


def _breakpoints(layers, lo, hi):
  """Sorted points of [lo, hi] between which every pre-activation (hence
  the output) is affine: layer by layer, the zero crossings of each
  pre-activation on each piece of the partition by the layers below."""
  points = np.array([lo, hi], np.float64)
  for k in range(len(layers) - 1):
    z = _forward(layers[: k + 1], points[:, None])  # last layer without ReLU
    a, b = points[:-1], points[1:]
    za, zb = z[:-1], z[1:]
    crossing = za * zb < 0
    roots = (
      a[:, None] + (b - a)[:, None] * za / np.where(crossing, za - zb, 1)
    )[crossing]
    points = np.unique(np.concatenate([points, roots]))
  return points


def _conjunction_feasible(layers, points, coeffs, offsets) -> bool:
  """Whether some x in [points[0], points[-1]] has coeffs·f(x) + offsets ≥ 0
  in every row: on each affine piece each row holds on an interval of t."""
  values = _forward(layers, points[:, None]) @ coeffs.T + offsets  # [P, R]
  for va, vb in zip(values[:-1], values[1:]):
    t_lo, t_hi = 0.0, 1.0
    for s, e in zip(va, vb):
      slope = e - s
      if slope > 0:
        t_lo = max(t_lo, -s / slope)
      elif slope < 0:
        t_hi = min(t_hi, s / -slope)
      elif s < 0:
        t_lo = 2.0
    if t_lo <= t_hi:
      return True
  return False


def test_exact_reference_matches_dense_sampling():
  layers = _random_mlp(3, (1, 6, 6, 2))
  points = _breakpoints(layers, -1.0, 1.0)
  grid = np.linspace(-1.0, 1.0, 20001)
  outputs = _forward(layers, grid[:, None])
  exact = _forward(layers, points[:, None])
  # The maximum over the breakpoints bounds every sampled value.
  assert np.all(outputs.max(0) <= exact.max(0) + 1e-9)
  assert np.allclose(outputs.max(0), exact.max(0), atol=1e-3)
  c = np.array([[1.0, 0.0]])
  top = exact[:, 0].max()
  assert _conjunction_feasible(layers, points, c, np.array([-top + 1e-9]))
  assert not _conjunction_feasible(layers, points, c, np.array([-top - 1e-6]))


# ---------------------------------------------------------------------------
# The search itself against the exact reference.

FAST = bab_search.BaBSettings(
  batch_domains=4, steps=10, root_steps=20, candidate_steps=10
)


def _box_verifier(layers):
  fn = lambda x: _jax_forward(layers, x)
  chain = splits.relu_chain(fn, jnp.zeros((1, layers[0][0].shape[1])))
  return bab_search.Verifier(chain, bab_search.BOX, FAST)


def _box_search(verifier, layers, lo, hi, spec, seconds=5.0):
  """The search on [lo, hi]^n, its candidates confirmed in float64."""

  def confirm(x):
    x = np.asarray(x, np.float64)
    if np.any(x < lo) or np.any(x > hi):
      return False
    y = _forward(layers, x[None])[0]
    rows = spec.coeffs @ y + spec.offsets >= 0
    return any(rows[spec.owner == d].all() for d in range(spec.num_disjuncts))

  n = layers[0][0].shape[1]
  return bab_search.search(
    verifier,
    bab_search.box_set(np.full(n, lo), np.full(n, hi)),
    spec,
    confirm,
    seconds=seconds,
  )


def _jax_forward(layers, x):
  for k, (w, b) in enumerate(layers):
    x = x @ jnp.asarray(w).T + jnp.asarray(b)
    if k < len(layers) - 1:
      x = jnp.maximum(x, 0.0)
  return x


@pytest.mark.parametrize("grouping", ["conjunction", "disjunction"])
def test_bab_verdicts_agree_with_exact_enumeration(grouping):
  """Two rows c_k·y + d_k ≥ 0, as one conjunction or as two disjuncts, with
  thresholds around the reachable values: a verdict must match the exact
  answer (cases within 1e-4 of the boundary are skipped), and clear cases
  must be decided."""
  layers = _random_mlp(5, (1, 8, 8, 2))
  verifier = _box_verifier(layers)
  points = _breakpoints(layers, -1.0, 1.0)
  outputs = _forward(layers, points[:, None])
  rng = np.random.default_rng(0)
  owner = np.array([0, 0]) if grouping == "conjunction" else np.array([0, 1])
  verdicts = set()
  for _ in range(10):
    coeffs = rng.normal(size=(2, 2))
    reach = outputs @ coeffs.T  # [P, 2]
    # Thresholds near each row's exact maximum, above or below it (a
    # disjunction is safe only when both are above).
    low = -0.2 if grouping == "conjunction" else -0.05
    offsets = -(reach.max(0) + rng.uniform(low, 0.1, size=2))

    def unsafe(shift):
      return any(
        _conjunction_feasible(
          layers, points, coeffs[owner == d], offsets[owner == d] + shift
        )
        for d in set(owner.tolist())
      )

    clearly_unsafe, clearly_safe = unsafe(-1e-4), not unsafe(1e-4)
    if not (clearly_unsafe or clearly_safe):
      continue
    spec = bab_search.disjunctive_spec(coeffs, offsets, owner)
    result = _box_search(verifier, layers, -1.0, 1.0, spec)
    verdicts.add(result.status)
    if clearly_safe:
      assert result.status == bab_search.VERIFIED, (coeffs, offsets)
    else:
      assert result.status == bab_search.FALSIFIED, (coeffs, offsets)
      x = result.counterexample
      assert -1.0 <= x[0] <= 1.0
  assert verdicts == {bab_search.VERIFIED, bab_search.FALSIFIED}


def test_disjunctive_spec_rejects_bad_rows():
  with pytest.raises(ValueError, match="one per row"):
    bab_search.disjunctive_spec(np.ones((2, 3)), np.zeros(3), [0, 1])
  with pytest.raises(ValueError, match="each with a row"):
    bab_search.disjunctive_spec(np.ones((2, 3)), np.zeros(2), [0, 2])
  spec = bab_search.margin_spec(1, 3)
  np.testing.assert_array_equal(spec.coeffs, [[1, -1, 0], [0, -1, 1]])
  assert spec.num_disjuncts == 2


# ---------------------------------------------------------------------------
# The verify command's stage.


@pytest.fixture(scope="module")
def random_net(tmp_path_factory):
  """A 2-8-8-2 ReLU MLP and the grid maximum of Y_0 − Y_1 on [−1, 1]²."""
  layers = _random_mlp(0, (2, 8, 8, 2))
  path = _onnx_mlp(layers, tmp_path_factory.mktemp("net") / "mlp.onnx")
  grid = np.linspace(-1.0, 1.0, 401)
  inputs = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
  top = float((_forward(layers, inputs) @ [1.0, -1.0]).max())
  return layers, path, verify.load_network(path), top


def test_bab_proves_what_alpha_crown_leaves_open(random_net, tmp_path):
  layers, path, network, top = random_net
  box = ([-1.0, -1.0], [1.0, 1.0])
  # Just above the grid's maximum: true, but α-CROWN's bound is looser.
  unsat = _vnnlib(
    tmp_path, "above", *box, 2, f"(assert (>= (- Y_0 Y_1) {top + 1e-3!r}))"
  )
  bounds_only = verify.verify_instance(
    path, unsat, 30, network=network, stages=BOUND_STAGES
  )
  assert bounds_only.result == verify.UNKNOWN
  result = verify.verify_instance(path, unsat, 30, network=network)
  assert (result.result, result.decided_by) == (verify.UNSAT, "bab")
  assert result.verify_seconds <= 30
  summary = tmp_path / "summary.csv"
  verify.write_summary(str(summary), [result])
  (row,) = csv.DictReader(summary.open())
  assert (row["result"], row["decided_by"]) == ("unsat", "bab")
  # Just below: a grid point is a counterexample, and one is reported.
  sat = _vnnlib(
    tmp_path, "below", *box, 2, f"(assert (>= (- Y_0 Y_1) {top - 1e-3!r}))"
  )
  found = verify.verify_instance(path, sat, 30, network=network)
  assert found.result == verify.SAT
  _check_counterexample(found, layers, *box, sat)


def test_bab_finds_a_needle_the_pgd_search_misses(tmp_path):
  """y = relu(1 − 100·|x − 0.3|) on [−1, 1]: Y_0 ≥ 0.5 only for
  |x − 0.3| ≤ 0.005, where the gradient of every start is 0 elsewhere."""
  layers = [
    (np.float32([[1.0], [-1.0]]), np.float32([-0.3, 0.3])),
    (np.float32([[-100.0, -100.0]]), np.float32([1.0])),
    (np.float32([[1.0]]), np.float32([0.0])),
  ]
  path = _onnx_mlp(layers, tmp_path / "needle.onnx")
  network = verify.load_network(path)
  vnnlib = _vnnlib(
    tmp_path, "needle", [-1.0], [1.0], 1, "(assert (>= Y_0 0.5))"
  )
  missed = verify.verify_instance(
    path, vnnlib, 10, network=network, stages=BOUND_STAGES
  )
  assert missed.result == verify.UNKNOWN
  result = verify.verify_instance(path, vnnlib, 10, network=network)
  assert (result.result, result.decided_by) == (verify.SAT, "bab")
  _check_counterexample(result, layers, [-1.0], [1.0], vnnlib)
  assert abs(result.counterexample.inputs[0] - 0.3) <= 0.005
  text = verify.result_text(result)
  assert text.startswith("sat\n((X_0 ") and "(Y_0 " in text


def test_conjunction_refuted_by_different_rows_on_different_domains(tmp_path):
  """y = (relu(x), relu(−x)): Y_0 ≥ 0.5 and Y_1 ≥ 0.5 are each reachable on
  [−1, 1], never together. No row is infeasible over the whole box, so the
  bound stages cannot decide; after splitting x, one row fails on each side."""
  layers = [
    (np.float32([[1.0], [-1.0]]), np.float32([0.0, 0.0])),
    (np.eye(2, dtype=np.float32), np.zeros(2, np.float32)),
  ]
  path = _onnx_mlp(layers, tmp_path / "split.onnx")
  network = verify.load_network(path)
  vnnlib = _vnnlib(
    tmp_path,
    "both",
    [-1.0],
    [1.0],
    2,
    "(assert (and (>= Y_0 0.5) (>= Y_1 0.5)))",
  )
  assert (
    verify.verify_instance(
      path, vnnlib, 10, network=network, stages=BOUND_STAGES
    ).result
    == verify.UNKNOWN
  )
  result = verify.verify_instance(path, vnnlib, 10, network=network)
  assert (result.result, result.decided_by) == (verify.UNSAT, "bab")
  # Either row alone is reachable: sat.
  one = _vnnlib(tmp_path, "one", [-1.0], [1.0], 2, "(assert (>= Y_1 0.5))")
  assert verify.verify_instance(path, one, 10, network=network).result == "sat"


def test_non_chain_network_skips_bab_with_its_reason(tmp_path):
  """y = relu(x) − relu(x) + x uses x after a ReLU (a skip connection):
  branch and bound is skipped, the instance stays unknown and says why."""
  nodes = [
    helper.make_node("Relu", ["x"], ["r1"]),
    helper.make_node("Relu", ["x"], ["r2"]),
    helper.make_node("Sub", ["r1", "r2"], ["zero"]),
    helper.make_node("Add", ["zero", "x"], ["y"]),
  ]
  graph = helper.make_graph(
    nodes,
    "skip",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  model.ir_version = 8
  path = tmp_path / "skip.onnx"
  onnx.save(model, path)
  # x = 1 reaches Y_0 = 1 but never Y_0 > 1; no bound stage proves it.
  vnnlib = _vnnlib(tmp_path, "strict", [-1.0], [1.0], 1, "(assert (> Y_0 1.0))")
  result = verify.verify_instance(str(path), vnnlib, 10)
  assert result.result == verify.UNKNOWN
  assert result.message.startswith("branch and bound skipped: ")
  assert "UnsupportedPrimitiveError" in result.message


def test_command_line_nobab_and_stages(random_net, tmp_path):
  _, path, _, top = random_net
  vnnlib = _vnnlib(
    tmp_path,
    "cli",
    [-1.0, -1.0],
    [1.0, 1.0],
    2,
    f"(assert (>= (- Y_0 Y_1) {top + 1e-3!r}))",
  )
  out = tmp_path / "result.txt"
  args = [path, vnnlib, "--timeout", "30", "--out", str(out)]
  assert verify_main.main(args + ["--nobab"]) == 0
  assert out.read_text() == "unknown\n"
  assert verify_main.main(args + ["--stages", "crown,bab"]) == 0
  assert out.read_text() == "unsat\n"
  with pytest.raises(SystemExit, match="unknown stage"):
    verify_main.main(args + ["--stages", "crown,beta"])
