"""Tests for cure_jax/certify/radii.py and the radius columns of evaluate."""

import json
import os

import jax
import numpy as np
import pytest

from cure_jax.certify import cascade, empirical, radii, report
from cure_jax.certify.evaluate import evaluate
from cure_jax.models import ConvNet

NUM_CLASSES = 3
DIM = 4
EPS_MAX = 0.2
TOLERANCE = EPS_MAX / 128
DUAL = {"linf": 1, "l2": 2, "l1": np.inf}


def linear(variables, x):
  """A linear classifier without a ``train`` argument."""
  return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


def _linear_problem(num=24, num_classes=NUM_CLASSES):
  """Points in [0.4, 0.6]^4 labelled by the classifier, and exact radii.

  The exact l_p radius of x is min_j (z_y − z_j) / ||w_y − w_j||_q (q the
  dual exponent); radii below 0.4 keep every ball's minimizer inside
  [0, 1]^4, so the domain does not change them.
  """
  key_w, key_b, key_x = jax.random.split(jax.random.PRNGKey(3), 3)
  w = np.asarray(jax.random.normal(key_w, (DIM, num_classes)))
  # Logits w·(x − 0.5) + small offsets: margins of the size of x − 0.5.
  offsets = 0.02 * jax.random.normal(key_b, (num_classes,))
  b = -0.5 * w.sum(0) + np.asarray(offsets)
  variables = {"w": w, "b": b}
  x = np.asarray(jax.random.uniform(key_x, (num, 1, 1, DIM), minval=0.4))
  x = 0.4 + 0.2 * (x - 0.4) / 0.6
  logits = x.reshape(num, DIM) @ variables["w"] + variables["b"]
  labels = np.argmax(logits, -1).astype(np.int32)
  exact = {}
  for norm, q in DUAL.items():
    per_class = []
    for j in range(num_classes):
      w_diff = variables["w"][:, labels].T - variables["w"][:, j]
      margin = logits[np.arange(num), labels] - logits[:, j]
      norm_q = np.linalg.norm(w_diff, ord=q, axis=-1)
      same = j == labels
      per_class.append(np.where(same, np.inf, margin / (norm_q + same)))
    exact[norm] = np.min(per_class, axis=0)
  return variables, x, labels, exact


@pytest.fixture(scope="module")
def linear_problem():
  return _linear_problem()


def test_bisection_steps_halve_to_the_tolerance():
  assert radii.bisection_steps(1.0, 1 / 64) == 6
  assert radii.bisection_steps(1.0, 0.01) == 7
  assert radii.bisection_steps(0.5, 1.0) == 0
  with pytest.raises(ValueError, match="must be > 0"):
    radii.bisection_steps(1.0, 0.0)


def test_bisect_finds_each_threshold_from_below():
  thresholds = np.array([0.0, 0.1, 0.37, 0.99, 2.0], np.float32)
  tested = []

  def holds(eps):
    tested.append(eps)
    return eps <= thresholds

  found = radii.bisect(holds, np.zeros(5), np.ones(5), steps=10)
  assert found.dtype == np.float32
  assert np.all(found <= thresholds)
  np.testing.assert_allclose(
    found, np.minimum(thresholds, 1 - 2.0**-10), atol=2.0**-10
  )
  # Each radius returned is one that was tested (or the start, 0).
  for i, value in enumerate(found):
    assert value == 0 or any(value == t[i] for t in tested)


def _ibp_radii(variables, x, labels, norm, **options):
  """`radii.certified_radii` of the linear model by IBP up to `EPS_MAX`."""
  return radii.certified_radii(
    linear,
    variables,
    x,
    labels,
    norm=norm,
    eps_max=EPS_MAX,
    tolerance=TOLERANCE,
    num_classes=NUM_CLASSES,
    methods=("ibp",),
    **options,
  )


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_certified_radius_is_certified_and_tight_for_a_linear_model(
  linear_problem, norm
):
  variables, x, labels, exact = linear_problem
  inside = exact[norm] < EPS_MAX - 2 * TOLERANCE
  assert inside.sum() >= 8
  found = _ibp_radii(variables, x, labels, norm)
  # Sound: never above the exact radius; tight: within the tolerance.
  assert np.all(found[inside] <= exact[norm][inside] + 1e-5)
  assert np.all(found[inside] >= exact[norm][inside] - TOLERANCE - 1e-5)

  def certified_at(eps):
    return np.asarray(
      cascade.certify_batch(
        linear,
        variables,
        x,
        labels,
        norm=norm,
        eps=eps,
        num_classes=NUM_CLASSES,
        methods=("ibp",),
      ).certified
    )

  assert certified_at(found).all()
  assert not certified_at(found + 2 * TOLERANCE)[inside].any()


def test_misclassified_and_invalid_points_get_radius_zero(linear_problem):
  variables, x, labels, _ = linear_problem
  labels = labels.copy()
  labels[0] = (labels[0] + 1) % NUM_CLASSES
  valid = np.ones(len(labels), bool)
  valid[1] = False
  found = _ibp_radii(variables, x, labels, "l2", valid=valid)
  assert found[0] == 0 and found[1] == 0
  assert np.all(found[2:] > 0)


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_radius_bounds_the_exact_radius_from_above(num_classes, norm):
  variables, x, labels, exact = _linear_problem(num_classes=num_classes)
  inside = exact[norm] < EPS_MAX - 2 * TOLERANCE
  assert inside.sum() >= 8
  found = radii.pgd_radii(
    linear,
    variables,
    x,
    labels,
    norm=norm,
    eps_max=EPS_MAX,
    tolerance=TOLERANCE,
    key=jax.random.PRNGKey(0),
    settings=empirical.PGDSettings(steps=20, restarts=1),
  )
  # No attack exists below the exact radius. With two classes the margin
  # loss has one gradient, and l∞ sign steps reach the closest attack (l2
  # steps turn towards it on the sphere only slowly).
  assert np.all(found[inside] >= exact[norm][inside] - TOLERANCE - 1e-5)
  if num_classes == 2 and norm == "linf":
    assert np.all(found[inside] <= exact[norm][inside] + 1e-5)


def test_search_checks_its_settings():
  with pytest.raises(ValueError, match="relative_tolerance"):
    radii.check_search(radii.RadiusSearch(relative_tolerance=1.5))
  with pytest.raises(ValueError, match="Unknown norm"):
    radii.check_search(radii.RadiusSearch(eps_max={"l3": 1.0}))
  with pytest.raises(ValueError, match="give RadiusSearch.eps_max"):
    radii.search_end(radii.RadiusSearch(), "linf", 0.0)
  assert radii.search_end(radii.RadiusSearch(), "l2", 0.25) == 0.5
  assert radii.search_end(radii.RadiusSearch(eps_max={"l2": 3.0}), "l2", 1) == 3
  with pytest.raises(ValueError, match="examples must be an int >= 1"):
    radii.check_search(radii.RadiusSearch(examples=0))
  for methods in ("ibp", (), ("ibp", "deepz")):
    with pytest.raises(ValueError, match="methods must be a non-empty"):
      radii.check_search(radii.RadiusSearch(methods=methods))


def test_searched_rows_are_the_first_examples():
  valid = np.array([True, True, True, False])
  every = radii.RadiusSearch()
  np.testing.assert_array_equal(radii.searched_rows(every, 8, valid), valid)
  first = radii.RadiusSearch(examples=6)
  np.testing.assert_array_equal(
    radii.searched_rows(first, 4, valid), [True, True, False, False]
  )
  assert not radii.searched_rows(first, 8, valid).any()


# evaluate with the radius search, on the setting of test_certify_evaluate.
RADII = {"linf": 0.01, "l2": 0.1}
SEARCH = radii.RadiusSearch(relative_tolerance=1 / 16)
MODEL = ConvNet(
  num_classes=NUM_CLASSES,
  conv_widths=(4,),
  conv_strides=(2,),
  dense_widths=(16,),
  batch_norm=False,
)


@pytest.fixture(scope="module")
def searched():
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 1)))
  variables = MODEL.init(jax.random.PRNGKey(0), x, train=False)
  labels = np.array(np.argmax(MODEL.apply(variables, x, train=False), -1))
  labels[0] = (labels[0] + 1) % NUM_CLASSES
  return evaluate(
    MODEL.apply,
    variables,
    x,
    labels,
    radii=RADII,
    num_classes=NUM_CLASSES,
    batch_size=4,
    methods=("ibp",),
    pgd=empirical.PGDSettings(steps=5, restarts=1),
    gather=False,  # fewer shapes to compile
    log=None,
    keep_margins=True,
    radius_search=SEARCH,
  )


def test_evaluate_adds_radii_consistent_with_the_flags(searched):
  records, summary = searched
  for norm, eps in RADII.items():
    certified_radius = records[f"radius_certified_{norm}"]
    pgd_radius = records[f"radius_pgd_{norm}"]
    np.testing.assert_array_equal(
      certified_radius >= np.float32(eps), records[f"certified_{norm}"]
    )
    np.testing.assert_array_equal(
      pgd_radius >= np.float32(eps), records[f"pgd_{norm}"]
    )
    assert np.all(pgd_radius >= certified_radius)
    assert np.all(certified_radius <= radii.search_end(SEARCH, norm, eps))
    assert certified_radius[0] == 0 and pgd_radius[0] == 0
    margin = records[f"margin_lower_{norm}"]
    assert margin[0] == -np.inf
    np.testing.assert_array_equal(margin > 0, records[f"certified_{norm}"])
  assert summary["radius_search"]["steps"] == 4
  assert set(summary["radius_search"]["certified"]) == set(RADII)


def test_radius_columns_survive_the_csv(searched, tmp_path):
  records, summary = searched
  report.write_report(str(tmp_path), records, summary)
  restored = report.read_csv(os.path.join(tmp_path, "certify.csv"))
  assert list(restored) == list(records)
  for name, column in records.items():
    if name.startswith(report.FLOAT_PREFIXES):
      np.testing.assert_array_equal(restored[name], column)
  written = report.read_json(os.path.join(tmp_path, "certify.json"))
  assert written["radius_search"] == json.loads(
    json.dumps(summary["radius_search"])
  )


def test_extend_records_rejects_unknown_and_short_columns(searched):
  records, _ = searched
  with pytest.raises(ValueError, match="followed by a norm"):
    report.extend_records(records, {"radius_linf": np.zeros(6)})
  with pytest.raises(ValueError, match="already present"):
    report.extend_records(records, {"radius_certified_linf": np.zeros(6)})
  with pytest.raises(ValueError, match="shape"):
    report.extend_records(records, {"radius_certified_l1": np.zeros(5)})


def test_a_search_of_the_first_points_with_cheap_stages(searched):
  """The first 5 of 6 points, searched by IBP alone with a cascade of IBP
  then CROWN at the evaluation radius: the same radii as a full IBP search on
  those points, NaN on the last one, and a summary over the searched ones."""
  records, _ = searched
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 1)))
  variables = MODEL.init(jax.random.PRNGKey(0), x, train=False)
  partial, summary = evaluate(
    MODEL.apply,
    variables,
    x,
    records["label"],
    radii=RADII,
    num_classes=NUM_CLASSES,
    batch_size=4,
    methods=("ibp", "crown"),
    pgd=empirical.PGDSettings(steps=5, restarts=1),
    gather=False,
    log=None,
    radius_search=SEARCH._replace(examples=5, methods=("ibp",)),
  )
  for norm, eps in RADII.items():
    for prefix in (report.RADIUS_CERTIFIED, report.RADIUS_PGD):
      column = partial[prefix + norm]
      assert np.all(np.isfinite(column[:5])) and np.isnan(column[5])
    radius = partial[report.RADIUS_CERTIFIED + norm][:5]
    # At ε the flags are the whole cascade's, whatever the search's stages.
    np.testing.assert_array_equal(
      radius >= np.float32(eps), partial[f"certified_{norm}"][:5]
    )
    ibp_only = records[report.RADIUS_CERTIFIED + norm][:5]
    extra = partial[f"certified_{norm}"][:5] & ~records[f"certified_{norm}"][:5]
    np.testing.assert_array_equal(radius[~extra], ibp_only[~extra])
  assert summary["radius_search"]["examples"] == 5
  assert summary["radius_search"]["methods"] == ["ibp"]
