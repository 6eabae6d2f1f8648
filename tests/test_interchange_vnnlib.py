"""The VNNLIB parser, its line-numbered errors, and the property writer."""

import gzip

import numpy as np
import pytest

from cure_jax.interchange import (
  VnnlibError,
  float32_box,
  parse_vnnlib,
  read_instances,
  read_vnnlib,
  robustness_property,
  write_instances,
)

HEADER = """; two inputs, three outputs
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (>= X_0 -0.5))
(assert (<= X_0 0.5))
(assert (>= X_1 0.0))
(assert (<= X_1 1e-1))
"""


def test_box_and_disjunction_of_conjunctions():
  prop = parse_vnnlib(
    HEADER
    + """(assert (or
      (and (>= Y_0 Y_1))
      (and (<= Y_2 Y_0) (> Y_1 0.25))))
    """
  )
  assert (prop.num_inputs, prop.num_outputs) == (2, 3)
  (region,) = prop.regions
  np.testing.assert_array_equal(region.lower, [-0.5, 0.0])
  np.testing.assert_array_equal(region.upper, [0.5, 0.1])
  first, second = region.disjuncts
  # Y_0 − Y_1 ≥ 0
  np.testing.assert_array_equal(first.coeffs, [[1, -1, 0]])
  np.testing.assert_array_equal(first.offsets, [0])
  np.testing.assert_array_equal(first.strict, [False])
  # Y_0 − Y_2 ≥ 0 and Y_1 − 0.25 > 0
  np.testing.assert_array_equal(second.coeffs, [[1, 0, -1], [0, 1, 0]])
  np.testing.assert_array_equal(second.offsets, [0, -0.25])
  np.testing.assert_array_equal(second.strict, [False, True])


def test_nested_formulas_expand_to_disjunctive_normal_form():
  prop = parse_vnnlib(
    HEADER
    + """(assert (and (or (>= Y_0 1) (>= Y_1 1))
                      (or (<= Y_2 0) (and (<= Y_2 5) (>= Y_2 4)))))
    (assert (<= Y_0 10))"""
  )
  (region,) = prop.regions
  assert [len(d.offsets) for d in region.disjuncts] == [3, 4, 3, 4]
  # Every disjunct carries the separate assert Y_0 ≤ 10: 10 − Y_0 ≥ 0.
  for d in region.disjuncts:
    assert any(
      np.array_equal(c, [-1, 0, 0]) and o == 10
      for c, o in zip(d.coeffs, d.offsets)
    )


def test_linear_terms_and_equality():
  prop = parse_vnnlib(
    HEADER
    + "(assert (>= (+ Y_0 (* 2 Y_1) (- Y_2) 1) (- (* Y_2 0.5) 3)))"
    + "(assert (= Y_1 0.5))"
  )
  (spec,) = prop.regions[0].disjuncts
  # Y_0 + 2 Y_1 − 1.5 Y_2 + 4 ≥ 0, Y_1 − 0.5 ≥ 0, 0.5 − Y_1 ≥ 0.
  np.testing.assert_allclose(spec.coeffs, [[1, 2, -1.5], [0, 1, 0], [0, -1, 0]])
  np.testing.assert_allclose(spec.offsets, [4, -0.5, 0.5])


def test_input_disjunctions_give_several_regions():
  text = """(declare-const X_0 Real)
(declare-const Y_0 Real)
(assert (or (and (>= X_0 0) (<= X_0 1) (>= Y_0 3))
            (and (>= X_0 2) (<= X_0 3) (>= Y_0 4))
            (and (>= X_0 0) (<= X_0 1) (<= Y_0 -1))))"""
  prop = parse_vnnlib(text)
  assert len(prop.regions) == 2
  first, second = prop.regions
  assert (first.lower[0], first.upper[0], len(first.disjuncts)) == (0, 1, 2)
  assert (second.lower[0], second.upper[0], len(second.disjuncts)) == (2, 3, 1)


def test_constant_atoms_and_repeated_bounds():
  text = """(declare-const X_0 Real)
(declare-const Y_0 Real)
(assert (>= X_0 0)) (assert (>= X_0 0.25)) (assert (<= X_0 1))
(assert (or (and (>= Y_0 0) (<= 1 0)) (and (<= Y_0 2) (>= 1 0))))"""
  (region,) = parse_vnnlib(text).regions
  assert region.lower[0] == 0.25  # the tighter bound
  (spec,) = region.disjuncts  # the disjunct with 1 ≤ 0 is dropped
  np.testing.assert_array_equal(spec.coeffs, [[-1]])


ERRORS = {
  "unbalanced": (
    "(declare-const X_0 Real)\n(assert (>= X_0 0)",
    2,
    "never closed",
  ),
  "extra_paren": ("(declare-const X_0 Real))", 1, "unbalanced"),
  "sort": ("(declare-const X_0 Int)", 1, "only Real"),
  "name": ("(declare-const Z_0 Real)", 1, "neither X_i nor Y_j"),
  "undeclared": (
    "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n\n(assert (>= Y_1 0))",
    4,
    "Y_1 is used before it is declared",
  ),
  "connective": (
    "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (not (>= Y_0 0)))",
    3,
    "unsupported connective 'not'",
  ),
  "mixed": (
    "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= Y_0 X_0))",
    3,
    "mix inputs X and outputs Y",
  ),
  "several_inputs": (
    "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)"
    "\n(assert (<= (+ X_0 X_1) 1))",
    4,
    "several inputs",
  ),
  "nonlinear": (
    "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= (* Y_0 Y_0) 1))",
    3,
    "not linear",
  ),
  "command": (
    "(declare-const X_0 Real)\n(define-fun f () Real 1)",
    2,
    "unsupported command",
  ),
  "unbounded": (
    "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
    "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (>= Y_0 0))",
    2,
    "X_1 has no upper bound",
  ),
  "chain": (
    "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= 0 X_0 1))",
    3,
    "exactly two operands",
  ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_name_the_line(case):
  text, line, message = ERRORS[case]
  with pytest.raises(VnnlibError, match=rf"line {line}: .*{message}"):
    parse_vnnlib(text)


def test_missing_declaration_and_file_name_in_errors(tmp_path):
  with pytest.raises(VnnlibError, match="X_0 is not declared"):
    parse_vnnlib("(declare-const X_1 Real)(declare-const Y_0 Real)")
  path = tmp_path / "bad.vnnlib.gz"
  with gzip.open(path, "wt") as f:
    f.write("(declare-const X_0 Real)\n(assert (>= X_0 0)")
  with pytest.raises(VnnlibError, match=r"bad\.vnnlib\.gz: line 2"):
    read_vnnlib(path)


def test_float32_box_rounds_outward_and_inward():
  lower, upper = np.array([0.1, 0.0, 0.3]), np.array([0.2, 0.0, 0.3])
  out_lo, out_hi = float32_box(lower, upper, outward=True)
  assert np.all(out_lo.astype(np.float64) <= lower)
  assert np.all(out_hi.astype(np.float64) >= upper)
  in_lo, in_hi = float32_box(lower, upper, outward=False)
  assert in_lo[0] >= 0.1 and in_hi[0] <= 0.2 and in_lo[0] <= in_hi[0]
  assert in_lo[1] == in_hi[1] == 0.0  # exactly representable: kept
  assert in_lo[2] == in_hi[2] == np.float32(0.3)  # no float32 inside: nearest


def test_writer_round_trips_through_the_parser():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=12)
  lower, upper = np.clip(x - 0.1, 0, 1), np.clip(x + 0.1, 0, 1)
  text = robustness_property(
    lower, upper, label=2, num_classes=4, comment="a\nb"
  )
  assert text.startswith("; a\n; b\n")
  (region,) = parse_vnnlib(text).regions
  np.testing.assert_array_equal(region.lower, lower)
  np.testing.assert_array_equal(region.upper, upper)
  rows = sorted(tuple(d.coeffs[0]) for d in region.disjuncts)
  assert rows == sorted(tuple(np.eye(4)[j] - np.eye(4)[2]) for j in (0, 1, 3))
  with pytest.raises(ValueError, match="label 4"):
    robustness_property(lower, upper, label=4, num_classes=4)


def test_instances_csv_round_trip_relative_to_its_folder(tmp_path):
  path = tmp_path / "instances.csv"
  write_instances(str(path), [("onnx/a.onnx", "specs/p.vnnlib", 30)])
  assert path.read_text() == "onnx/a.onnx,specs/p.vnnlib,30.0\n"
  (instance,) = read_instances(str(path))
  assert instance.onnx_path == str(tmp_path / "onnx" / "a.onnx")
  assert instance.vnnlib_path == str(tmp_path / "specs" / "p.vnnlib")
  assert instance.timeout == 30.0
  path.write_text("a.onnx,p.vnnlib\n")
  with pytest.raises(ValueError, match="line 1: expected onnx,vnnlib,timeout"):
    read_instances(str(path))
