"""Tests for cure_jax/certify/evaluate.py."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.certify import cascade, empirical, report
from cure_jax.certify.evaluate import evaluate
from cure_jax.models import ConvNet

NUM_CLASSES = 3
NUM_POINTS = 10
BATCH_SIZE = 4  # Batches of 4, 4 and 2 (padded to 4).
RADII = {"linf": 0.01, "l2": 0.1, "l1": 0.3}
METHODS = ("ibp", "crown_ibp")
PGD = empirical.PGDSettings(steps=10, restarts=2)
MODEL = ConvNet(
  num_classes=NUM_CLASSES,
  conv_widths=(4,),
  conv_strides=(2,),
  dense_widths=(16,),
  batch_norm=False,
)


def _problem():
  """Random weights, 8×8 images; labels = predictions but #0 and #5 flipped."""
  x = np.asarray(
    jax.random.uniform(jax.random.PRNGKey(1), (NUM_POINTS, 8, 8, 1))
  )
  variables = MODEL.init(jax.random.PRNGKey(0), x, train=False)
  labels = np.array(jnp.argmax(MODEL.apply(variables, x, train=False), -1))
  labels[[0, 5]] = (labels[[0, 5]] + 1) % NUM_CLASSES
  return variables, x, labels


@pytest.fixture(scope="module")
def run():
  variables, x, labels = _problem()
  lines = []
  records, summary = evaluate(
    MODEL.apply,
    variables,
    x,
    labels,
    radii=RADII,
    num_classes=NUM_CLASSES,
    batch_size=BATCH_SIZE,
    methods=METHODS,
    pgd=PGD,
    gather=False,
    log=lines.append,
  )
  return variables, x, labels, records, summary, lines


def test_records_are_sound_and_consistent(run):
  _, _, labels, records, _, _ = run
  assert tuple(records) == report.record_columns(RADII, RADII)
  np.testing.assert_array_equal(records["index"], np.arange(NUM_POINTS))
  np.testing.assert_array_equal(records["label"], labels)
  np.testing.assert_array_equal(
    records["correct"], np.arange(NUM_POINTS) % 5 != 0
  )
  union, union_pgd = records["correct"].copy(), records["correct"].copy()
  for norm in RADII:
    certified = records[f"certified_{norm}"]
    # Certified ⟹ PGD-robust ⟹ correct: the certificate is sound end to end.
    assert np.all(records[f"pgd_{norm}"][certified])
    assert np.all(records["correct"][records[f"pgd_{norm}"]])
    stage = records[f"stage_{norm}"]
    assert np.all(np.isin(stage[certified], METHODS))
    assert np.all(stage[~certified] == report.STAGE_NONE)
    union &= certified
    union_pgd &= records[f"pgd_{norm}"]
  np.testing.assert_array_equal(records["union_certified"], union)
  np.testing.assert_array_equal(records["union_pgd"], union_pgd)
  assert np.any(records["certified_linf"]) and np.any(records["certified_l2"])


def test_batching_and_padding_do_not_change_certificates(run):
  variables, x, labels, records, _, _ = run
  whole = cascade.certify_batch(
    MODEL.apply,
    variables,
    x,
    labels,
    norm="linf",
    eps=RADII["linf"],
    num_classes=NUM_CLASSES,
    methods=METHODS,
    gather=False,
  )
  np.testing.assert_array_equal(records["certified_linf"], whole.certified)
  stages = np.asarray(METHODS + (report.STAGE_NONE,))[whole.method_index]
  np.testing.assert_array_equal(records["stage_linf"], stages)


def test_summary_matches_records_and_is_json(run):
  _, _, _, records, summary, _ = run
  json.dumps(summary, allow_nan=False)
  assert summary["num_examples"] == NUM_POINTS
  assert summary["clean"]["count"] == 8
  assert summary["radii"] == RADII
  for norm in RADII:
    cert = summary["certified"][norm]
    assert cert["count"] == int(records[f"certified_{norm}"].sum())
    assert sum(cert["by_stage"].values()) == cert["count"]
    times = summary["timing"]["certify"][norm]
    # Every correct point the attack did not break, no padding.
    unbroken = int(records[f"pgd_{norm}"].sum())
    assert times["ibp"]["points"] == unbroken
    assert times["crown_ibp"]["points"] == unbroken - cert["by_stage"]["ibp"]
    assert times["ibp"]["rows"] == 3 * BATCH_SIZE
    assert summary["timing"]["pgd"][norm]["points"] == NUM_POINTS
    assert summary["pgd_robust"][norm]["count"] == int(
      records[f"pgd_{norm}"].sum()
    )
  assert summary["settings"]["pgd"] == PGD._asdict()


def test_log_reports_progress_and_the_table(run):
  *_, summary, lines = run
  assert [line.split()[0] for line in lines[:3]] == [
    "[4/10]",
    "[8/10]",
    "[10/10]",
  ]
  assert lines[-1] == report.format_table(summary)


def test_without_pgd_there_are_no_pgd_columns(run):
  variables, x, labels, *_ = run
  records, summary = evaluate(
    MODEL.apply,
    variables,
    x,
    labels,
    radii={"linf": RADII["linf"]},
    num_classes=NUM_CLASSES,
    batch_size=BATCH_SIZE,
    methods=METHODS,
    pgd=None,
    gather=False,
    log=None,
  )
  assert tuple(records) == report.record_columns(["linf"])
  assert "pgd_robust" not in summary and summary["timing"]["pgd"] == {}


@pytest.mark.parametrize(
  "change,message",
  [
    (dict(radii={}), "at least one norm"),
    (dict(radii={"l3": 0.1}), "Unknown norm"),
    (dict(radii={"linf": -0.1}), "scalar >= 0"),
    (dict(pgd_norms=("l2",)), r"pgd_norms \['l2'\] have no radius"),
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(labels=np.zeros(3, np.int32)), "as many labels as images"),
    (dict(pgd=empirical.PGDSettings(steps=0)), "steps must be"),
  ],
)
def test_bad_arguments_explain_the_fix(change, message):
  variables, x, labels = _problem()
  kwargs = dict(
    labels=labels,
    radii={"linf": 0.01},
    num_classes=NUM_CLASSES,
    methods=("ibp",),
    log=None,
  )
  kwargs.update(change)
  labels = kwargs.pop("labels")
  with pytest.raises(ValueError, match=message):
    evaluate(MODEL.apply, variables, x, labels, **kwargs)
