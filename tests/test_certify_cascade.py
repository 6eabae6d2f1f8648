"""Tests for cure_jax/certify/cascade.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import attacks, bounds
from cure_jax.certify import cascade, empirical, evaluate
from cure_jax.certify import report as report_lib
from cure_jax.models import MLP, ConvNet

NUM_CLASSES = 3
BATCH = 16
ALPHA_STEPS = 10
MISCLASSIFIED = np.arange(3)  # Points whose label the fixtures flip.
# Two radii per batch: IBP certifies some points at the small one, CROWN and
# α-CROWN others at the large one (checked in test_every_stage_certifies).
LINF_EPS = np.where(np.arange(BATCH) % 2, 0.04, 0.01).astype(np.float32)
MLP_MODEL = MLP(num_classes=NUM_CLASSES, hidden_widths=(16, 16))
CNN_MODEL = ConvNet(
  num_classes=NUM_CLASSES,
  conv_widths=(4,),
  conv_strides=(2,),
  dense_widths=(16,),
  batch_norm=True,
)
CNN_EPS = {"l2": 0.1, "l1": 0.3}


def _problem(model, seed=0):
  """Random weights, 8×8 images; labels = predictions but 3 flipped."""
  x = jax.random.uniform(jax.random.PRNGKey(seed + 1), (BATCH, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(seed), x, train=False)
  if "batch_stats" in variables:  # Non-trivial running statistics.
    stats = jax.tree.map(lambda s: s + 0.1, variables["batch_stats"])
    variables = dict(variables, batch_stats=stats)
  labels = np.array(jnp.argmax(model.apply(variables, x, train=False), -1))
  labels[MISCLASSIFIED] = (labels[MISCLASSIFIED] + 1) % NUM_CLASSES
  return variables, x, labels


def _clean_margin(model, variables, x, labels):
  """min_{j≠y} z_y − z_j at the points x."""
  logits = model.apply(variables, x, train=False)
  return -attacks.margin(logits, jnp.asarray(labels))


def _certify_mlp(variables, x, labels, **options):
  """`cascade.certify_batch` of the MLP, by default over B∞(x, `LINF_EPS`)."""
  options = dict(norm="linf", eps=LINF_EPS, num_classes=NUM_CLASSES) | options
  return cascade.certify_batch(MLP_MODEL.apply, variables, x, labels, **options)


@pytest.fixture(scope="module")
def mlp():
  variables, x, labels = _problem(MLP_MODEL)
  result, reports = _certify_mlp(
    variables, x, labels, alpha_steps=ALPHA_STEPS, return_stage_reports=True
  )
  return variables, x, labels, result, reports


@pytest.fixture(scope="module")
def cnn():
  variables, x, labels = _problem(CNN_MODEL)
  results = {
    norm: cascade.certify_batch(
      CNN_MODEL.apply,
      variables,
      x,
      labels,
      norm=norm,
      eps=eps,
      num_classes=NUM_CLASSES,
      methods=("ibp", "crown"),
    )
    for norm, eps in CNN_EPS.items()
  }
  return variables, x, labels, results


@functools.partial(jax.jit, static_argnums=(0, 1))
def _attacked_margin(apply_fn, norm, variables, x, labels, eps, key):
  """The least margin found by PGD (10 restarts) and, for l∞, box vertices."""
  logits_fn = lambda z: apply_fn(variables, z, train=False)
  x_adv = attacks.pgd(
    logits_fn,
    x,
    labels,
    norm=norm,
    eps=eps,
    steps=40,
    step_size=2.5 * eps / 40,
    key=key,
    restarts=10,
    loss="margin",
  )
  least = -attacks.margin(logits_fn(x_adv), labels)
  if norm == "linf":  # Random vertices: a ReLU net's extremes are often there.
    signs = jax.random.rademacher(key, (32,) + x.shape, jnp.float32)
    corners = jnp.clip(x + eps[:, None, None, None] * signs, 0.0, 1.0)
    margins = jax.vmap(lambda z: -attacks.margin(logits_fn(z), labels))(corners)
    least = jnp.minimum(least, jnp.min(margins, axis=0))
  return least


def _assert_sound(model, variables, x, labels, result, norm, eps, key):
  """No attack breaks a certified point, nor beats any margin lower bound."""
  eps = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), (BATCH,))
  attacked = np.asarray(
    _attacked_margin(
      model.apply, norm, variables, x, jnp.asarray(labels), eps, key
    )
  )
  assert np.all(attacked[np.asarray(result.certified)] > 0)
  np.testing.assert_array_less(
    np.asarray(result.margins_lower), attacked + 1e-5
  )


def _assert_mlp_sound(variables, x, labels, result, seed):
  """`_assert_sound` of an MLP result over B∞(x, `LINF_EPS`)."""
  _assert_sound(
    MLP_MODEL,
    variables,
    x,
    labels,
    result,
    "linf",
    LINF_EPS,
    jax.random.PRNGKey(seed),
  )


def test_certified_points_survive_strong_pgd_linf(mlp):
  variables, x, labels, result, _ = mlp
  _assert_mlp_sound(variables, x, labels, result, seed=7)


@pytest.mark.parametrize("norm", sorted(CNN_EPS))
def test_certified_points_survive_strong_pgd_l2_l1_batchnorm_cnn(cnn, norm):
  variables, x, labels, results = cnn
  assert np.any(results[norm].certified)
  _assert_sound(
    CNN_MODEL,
    variables,
    x,
    labels,
    results[norm],
    norm,
    CNN_EPS[norm],
    jax.random.PRNGKey(8),
  )


def test_every_stage_certifies_some_point_and_some_remain(mlp):
  _, _, _, result, reports = mlp
  index = np.asarray(result.method_index)
  for stage in range(3):
    assert np.any(index == stage), reports
  assert np.any(index[3:] == cascade.NOT_CERTIFIED)  # A correct point fails.


def test_misclassified_points_are_never_certified(mlp, cnn):
  results = [mlp[3]] + list(cnn[3].values())
  for result in results:
    np.testing.assert_array_equal(
      np.asarray(result.certified)[MISCLASSIFIED], False
    )
    np.testing.assert_array_equal(
      np.asarray(result.method_index)[MISCLASSIFIED], cascade.NOT_CERTIFIED
    )
    assert np.all(np.isneginf(np.asarray(result.margins_lower)[MISCLASSIFIED]))


@pytest.mark.parametrize(
  "model,norm", [(MLP_MODEL, "linf"), (CNN_MODEL, "l2"), (CNN_MODEL, "l1")]
)
def test_eps_zero_certifies_exactly_the_correct_points(model, norm):
  variables, x, labels = _problem(model)
  result = cascade.certify_batch(
    model.apply,
    variables,
    x,
    labels,
    norm=norm,
    eps=0.0,
    num_classes=NUM_CLASSES,
    methods=("ibp",),
  )
  clean = np.asarray(_clean_margin(model, variables, x, labels))
  correct = np.ones(BATCH, bool)
  correct[MISCLASSIFIED] = False
  np.testing.assert_array_equal(result.certified, correct)
  np.testing.assert_array_equal(result.method_index, np.where(correct, 0, -1))
  # At ε = 0 the bound is the clean margin itself.
  np.testing.assert_allclose(
    np.asarray(result.margins_lower)[correct], clean[correct], atol=1e-5
  )


def test_shared_slope_alpha_crown_stage_is_sound_and_beats_crown(mlp):
  variables, x, labels, _, _ = mlp
  margins = {
    method: np.asarray(
      cascade.bound_margins(
        MLP_MODEL.apply,
        variables,
        x,
        jnp.asarray(labels),
        norm="linf",
        eps=jnp.asarray(LINF_EPS),
        method=method,
        num_classes=NUM_CLASSES,
        alpha_steps=ALPHA_STEPS,
      )
    )
    for method in ("crown", "alpha_crown_shared")
  }
  assert np.all(margins["alpha_crown_shared"] >= margins["crown"] - 1e-5)
  assert np.any(margins["alpha_crown_shared"] > margins["crown"] + 1e-4)
  result = _certify_mlp(
    variables,
    x,
    labels,
    methods=("ibp", "alpha_crown_shared"),
    alpha_steps=ALPHA_STEPS,
  )
  assert np.any(np.asarray(result.method_index) == 1)
  _assert_mlp_sound(variables, x, labels, result, seed=9)


def test_adding_stages_never_uncertifies(mlp):
  variables, x, labels, full, _ = mlp
  previous = None
  for length in (1, 2):
    methods = cascade.DEFAULT_BOUND_METHODS[:length]
    prefix = _certify_mlp(
      variables, x, labels, methods=methods, alpha_steps=ALPHA_STEPS
    )
    certified = np.asarray(prefix.certified)
    if previous is not None:
      assert np.all(certified[previous])
    # Earlier stages decide identically whatever follows them.
    np.testing.assert_array_equal(
      np.asarray(full.method_index)[certified],
      np.asarray(prefix.method_index)[certified],
    )
    previous = certified
  assert np.all(np.asarray(full.certified)[previous])
  assert np.sum(full.certified) > np.sum(previous)


def test_traced_full_batch_cascade_matches_gathered(mlp):
  variables, x, labels, gathered, _ = mlp
  methods = ("ibp", "crown")
  traced = jax.jit(
    lambda v, images, y, eps: cascade.certify_batch(
      MLP_MODEL.apply,
      v,
      images,
      y,
      norm="linf",
      eps=eps,
      num_classes=NUM_CLASSES,
      methods=methods,
      gather=False,
    )
  )(variables, x, labels, LINF_EPS)
  # The gathered run's first two stages certify the same points.
  stage = np.asarray(gathered.method_index)
  early = (stage >= 0) & (stage < len(methods))
  np.testing.assert_array_equal(traced.certified, early)
  np.testing.assert_array_equal(
    traced.method_index, np.where(early, stage, cascade.NOT_CERTIFIED)
  )
  np.testing.assert_allclose(
    np.asarray(traced.margins_lower)[early],
    np.asarray(gathered.margins_lower)[early],
    atol=1e-5,
  )
  assert np.all(np.asarray(traced.margins_lower)[stage == 2] <= 0)


def test_stage_reports_account_for_every_point(mlp):
  _, _, _, result, reports = mlp
  assert [r.method for r in reports] == list(cascade.DEFAULT_BOUND_METHODS)
  assert reports[0].points == BATCH - len(MISCLASSIFIED)
  for before, after in zip(reports, reports[1:]):
    assert after.points == before.points - before.certified
  assert sum(r.certified for r in reports) == int(np.sum(result.certified))
  for report in reports:
    assert report.rows == cascade.gather_size(report.points, BATCH)
    assert report.run_seconds >= 0 and report.compile_seconds >= 0


def test_invalid_rows_are_skipped(mlp):
  variables, x, labels, full, _ = mlp
  valid = np.arange(BATCH) < 10
  result, reports = _certify_mlp(
    variables,
    x,
    labels,
    methods=("ibp",),
    valid=valid,
    return_stage_reports=True,
  )
  assert not np.any(np.asarray(result.certified)[~valid])
  assert np.all(np.isneginf(np.asarray(result.margins_lower)[~valid]))
  assert reports[0].points == 10 - len(MISCLASSIFIED)
  by_ibp = np.asarray(full.method_index)[valid] == 0
  np.testing.assert_array_equal(np.asarray(result.certified)[valid], by_ibp)


def test_points_with_a_known_counterexample_are_not_bounded(mlp):
  variables, x, labels, full, _ = mlp
  open_points = ~np.asarray(full.certified)
  open_points[MISCLASSIFIED] = False
  # Counterexamples "known" for an open point, a certified one (a wrong
  # claim: the cascade trusts it) and a misclassified one (ignored).
  known = np.zeros(BATCH, bool)
  first_open = np.flatnonzero(open_points)[0]
  certified_one = np.flatnonzero(np.asarray(full.certified))[0]
  known[first_open] = known[certified_one] = known[MISCLASSIFIED[0]] = True
  result, reports = _certify_mlp(
    variables,
    x,
    labels,
    alpha_steps=ALPHA_STEPS,
    known_falsified=known,
    return_stage_reports=True,
  )
  falsified = np.asarray(result.falsified)
  expected = known.copy()
  expected[MISCLASSIFIED[0]] = False
  np.testing.assert_array_equal(falsified, expected)
  bounded = np.isfinite(np.asarray(result.margins_lower))
  assert not np.any(bounded & known)
  assert reports[0].points == BATCH - len(MISCLASSIFIED) - 2
  # Every other point gets the certificate it had.
  others = ~known
  np.testing.assert_array_equal(
    np.asarray(result.certified)[others], np.asarray(full.certified)[others]
  )
  np.testing.assert_array_equal(
    np.asarray(result.method_index)[others],
    np.asarray(full.method_index)[others],
  )
  traced = jax.jit(
    lambda x, falsified: _certify_mlp(
      variables,
      x,
      labels,
      methods=("ibp",),
      gather=False,
      known_falsified=falsified,
    )
  )(x, known)
  np.testing.assert_array_equal(np.asarray(traced.falsified), expected)
  assert not np.any(np.asarray(traced.certified) & known)


def test_attacking_first_changes_no_certificate_and_skips_broken_points(mlp):
  variables, x, labels, _, _ = mlp
  options = dict(
    radii={"linf": 0.04},
    num_classes=NUM_CLASSES,
    batch_size=BATCH,
    alpha_steps=ALPHA_STEPS,
    pgd=empirical.PGDSettings(steps=20, restarts=1),
    log=None,
  )
  results = {
    first: evaluate(
      MLP_MODEL.apply,
      variables,
      np.asarray(x),
      labels,
      attack_first=first,
      **options,
    )
    for first in (False, True)
  }
  (late, late_summary), (early, early_summary) = results.values()
  for column in ("certified_linf", "stage_linf", "pgd_linf"):
    np.testing.assert_array_equal(late[column], early[column])
  broken = early["correct"] & ~early["pgd_linf"]
  assert broken.any()  # the radius leaves the attack something to break
  stages = lambda s: s["timing"]["certify"]["linf"]
  assert stages(early_summary)["ibp"]["points"] == (
    stages(late_summary)["ibp"]["points"] - int(broken.sum())
  )


@pytest.mark.parametrize(
  "pending,batch,expected",
  [
    (16, 16, 16),
    (9, 16, 16),
    (8, 16, 8),
    (3, 16, 4),
    (1, 16, 1),
    (300, 500, 500),
    (40, 500, 63),
    (5, 500, 32),
    (2, 3, 2),
    (1, 3, 1),
  ],
)
def test_gather_size_by_hand(pending, batch, expected):
  assert cascade.gather_size(pending, batch) == expected


@pytest.mark.parametrize(
  "change,message",
  [
    (dict(norm="l3"), "Unknown norm"),
    (dict(methods=("ibp", "beta_crown")), "Unknown bound method"),
    (dict(methods="ibp"), "non-empty sequence"),
    (dict(eps=-0.1), "eps must be >= 0"),
    (dict(eps=np.zeros(3)), "eps must be a scalar or have shape"),
    (dict(labels=np.full(BATCH, 3)), r"labels must lie in \[0, 3\)"),
    (dict(labels=np.zeros(BATCH, np.float32)), "labels must be integers"),
    (dict(images=np.full((BATCH, 8, 8, 1), 255.0)), "must lie in \\[0, 1\\]"),
    (dict(num_classes=4), "Is num_classes right"),
    (dict(alpha_steps=-1), "alpha_steps"),
    (dict(valid=np.ones(3, bool)), "valid must be"),
    (dict(known_falsified=np.ones(3, bool)), "known_falsified must be"),
  ],
)
def test_bad_arguments_explain_the_fix(change, message):
  variables, x, labels = _problem(MLP_MODEL)
  kwargs = dict(
    images=x,
    labels=labels,
    norm="linf",
    eps=0.01,
    num_classes=NUM_CLASSES,
    methods=("ibp",),
  )
  kwargs.update(change)
  with pytest.raises(ValueError, match=message):
    cascade.certify_batch(MLP_MODEL.apply, variables, **kwargs)


def test_gathering_under_jit_is_refused():
  variables, x, labels = _problem(MLP_MODEL)
  with pytest.raises(ValueError, match="gather=False"):
    jax.jit(
      lambda images: _certify_mlp(
        variables, images, labels, eps=0.01, methods=("ibp",)
      )
    )(x)


@pytest.fixture(scope="module")
def mlp_bab(mlp):
  variables, x, labels, _, _ = mlp
  return _certify_mlp(
    variables,
    x,
    labels,
    alpha_steps=ALPHA_STEPS,
    return_stage_reports=True,
    bab_seconds=3.0,
  )


def test_branch_and_bound_extends_the_cascade_soundly(mlp, mlp_bab):
  variables, x, labels, before, _ = mlp
  result, reports = mlp_bab
  certified, falsified = (
    np.asarray(result.certified),
    np.asarray(result.falsified),
  )
  assert np.all(certified >= np.asarray(before.certified))
  assert not np.any(certified & falsified)
  assert not np.any(falsified[MISCLASSIFIED])  # only correct points
  by_bab = certified & ~np.asarray(before.certified)
  bab_index = len(cascade.DEFAULT_BOUND_METHODS)
  np.testing.assert_array_equal(
    np.asarray(result.method_index) == bab_index, by_bab
  )
  assert [r.method for r in reports] == [
    *cascade.DEFAULT_BOUND_METHODS,
    cascade.BAB_STAGE,
  ]
  pending = np.asarray(before.certified).size - len(MISCLASSIFIED)
  pending -= int(np.sum(before.certified))
  assert reports[-1].points == pending
  assert reports[-1].certified == int(by_bab.sum())
  assert reports[-1].falsified == int(falsified.sum())
  # BaB decides some of the points α-CROWN left open.
  assert by_bab.sum() + falsified.sum() > 0
  _assert_sound(
    MLP_MODEL,
    variables,
    x,
    labels,
    result,
    "linf",
    LINF_EPS,
    jax.random.PRNGKey(8),
  )


def test_branch_and_bound_is_refused_under_jit(mlp):
  variables, x, labels, _, _ = mlp
  with pytest.raises(ValueError, match="bab_seconds=0"):
    jax.jit(
      lambda images: (
        _certify_mlp(
          variables, images, labels, eps=0.01, gather=False, bab_seconds=1.0
        ).certified
      )
    )(x)
  with pytest.raises(ValueError, match="bab_seconds"):
    _certify_mlp(variables, x, labels, eps=0.01, bab_seconds=-1.0)


class _TanhNet(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = jnp.tanh(nn.Dense(8)(x.reshape(x.shape[0], -1)))
    return nn.Dense(NUM_CLASSES)(x)


def test_branch_and_bound_names_an_unsupported_network():
  model = _TanhNet()
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 2))
  variables = model.init(jax.random.PRNGKey(1), x, train=False)
  labels = np.asarray(jnp.argmax(model.apply(variables, x, train=False), -1))
  with pytest.raises(bounds.UnsupportedPrimitiveError, match="'tanh'"):
    cascade.certify_batch(
      model.apply,
      variables,
      x,
      labels,
      norm="linf",
      eps=0.5,
      num_classes=NUM_CLASSES,
      methods=("ibp",),
      bab_seconds=1.0,
    )


def test_evaluate_reports_falsified_points(mlp, tmp_path):
  variables, x, labels, _, _ = mlp
  records, summary = evaluate(
    MLP_MODEL.apply,
    variables,
    np.asarray(x),
    labels,
    radii={"linf": 0.04},
    num_classes=NUM_CLASSES,
    batch_size=BATCH,
    alpha_steps=ALPHA_STEPS,
    pgd=None,
    log=None,
    bab_seconds=2.0,
  )
  assert tuple(records) == report_lib.record_columns(["linf"], (), ["linf"])
  falsified = records["falsified_linf"]
  assert not np.any(falsified & records["certified_linf"])
  assert not np.any(falsified & ~records["correct"])
  assert summary["falsified"]["linf"]["count"] == int(falsified.sum())
  assert summary["methods"][-1] == cascade.BAB_STAGE
  by_stage = summary["certified"]["linf"]["by_stage"]
  assert sum(by_stage.values()) == summary["certified"]["linf"]["count"]
  assert "falsified" in report_lib.format_table(summary).splitlines()[1]
  csv_path, _ = report_lib.write_report(str(tmp_path), records, summary)
  np.testing.assert_array_equal(
    report_lib.read_csv(csv_path)["falsified_linf"], falsified
  )
