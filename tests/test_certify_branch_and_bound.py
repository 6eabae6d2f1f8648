"""Tests for cure_jax/bounds/splits.py and cure_jax/certify/branch_and_bound.py.

Ground truth on a 2-8-8-2 ReLU MLP: the exact minimum of each margin over
the box is the least of the linear programs over the activation patterns
met on a dense grid (scipy's linprog; each pattern's region is a polytope
on which the network is affine), and never above the grid's minimum.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import attacks, bounds
from cure_jax.bounds import splits
from cure_jax.certify import branch_and_bound as bab
from cure_jax.certify import cascade
from cure_jax.models import MLP, ConvNet

optimize = pytest.importorskip("scipy.optimize")

MLP_MODEL = MLP(num_classes=2, hidden_widths=(8, 8))
CNN_MODEL = ConvNet(
  num_classes=3,
  conv_widths=(2,),
  conv_strides=(2,),
  dense_widths=(6,),
  batch_norm=True,
)
SETTINGS = bab.BaBSettings(seconds=20.0, batch_domains=16)
# Margins within this of 0 are left out of the decidedness checks (float32).
DECIDED_BEYOND = 2e-3


def _with_random_biases(variables, seed, scale=0.02):
  """Flax initializes biases at 0 (margins exactly 0 where every ReLU is
  off, undecidable); small random ones move the kinks off the origin."""
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), 64))
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: (
      leaf + scale * jax.random.normal(next(keys), leaf.shape)
      if "bias" in jax.tree_util.keystr(path)
      else leaf
    ),
    variables,
  )


def _mlp(seed):
  x = jax.random.uniform(jax.random.PRNGKey(seed + 100), (6, 2))
  variables = MLP_MODEL.init(jax.random.PRNGKey(seed), x, train=False)
  return _with_random_biases(variables, seed), np.asarray(x)


def _mlp_layers(variables):
  params = variables["params"]
  names = sorted(params, key=lambda n: (n == "logits", n))
  return [
    (np.asarray(params[n]["kernel"]), np.asarray(params[n]["bias"]))
    for n in names
  ]


def _pattern_lp(layers, pattern, lower, upper, row):
  """min row·f(x) over x in [lower, upper] with the ReLU signs ``pattern``."""
  weight, bias = np.eye(len(lower)), np.zeros(len(lower))  # x -> affine map
  a_ub, b_ub = [], []
  for (kernel, b), signs in zip(layers[:-1], pattern):
    weight, bias = weight @ kernel, bias @ kernel + b  # z = x·W + c
    # signs: z >= 0 (active) or z <= 0, as -s·z <= 0.
    s = np.where(signs, 1.0, -1.0)
    a_ub.append(-(weight * s).T)
    b_ub.append(bias * s)
    weight, bias = weight * signs, bias * signs
  kernel, b = layers[-1]
  weight, bias = weight @ kernel, bias @ kernel + b
  result = optimize.linprog(
    weight @ row,
    A_ub=np.concatenate(a_ub),
    b_ub=np.concatenate(b_ub),
    bounds=list(zip(lower, upper)),
    method="highs",
  )
  return result.fun + bias @ row if result.status == 0 else np.inf


def _exact_min_margin(variables, point, label, eps):
  """Exact min of z_y − z_j over the l∞ ball ∩ [0, 1]² (see the docstring)."""
  lower = np.maximum(point - eps, 0.0)
  upper = np.minimum(point + eps, 1.0)
  grid = np.stack(
    np.meshgrid(*[np.linspace(lo, hi, 201) for lo, hi in zip(lower, upper)]),
    -1,
  ).reshape(-1, 2)
  layers = _mlp_layers(variables)
  row = np.zeros(2)
  row[label], row[1 - label] = 1.0, -1.0
  z, patterns = grid, []
  for kernel, b in layers[:-1]:
    z = z @ kernel + b
    patterns.append(z > 0)
    z = np.maximum(z, 0.0)
  sampled = np.min((z @ layers[-1][0] + layers[-1][1]) @ row)
  unique = np.unique(np.concatenate(patterns, axis=1), axis=0)
  widths = [k.shape[1] for k, _ in layers[:-1]]
  split_at = np.cumsum(widths)[:-1]
  exact = min(
    _pattern_lp(layers, np.split(p, split_at), lower, upper, row)
    for p in unique
  )
  assert exact <= sampled + 1e-6
  return exact


def _apply_margin(model, variables, x, label):
  logits = np.asarray(
    model.apply(variables, jnp.asarray(x)[None], train=False)
  )[0]
  return logits[label] - np.delete(logits, label).max()


# ------------------------------------------------------------- the chain


def test_relu_chain_reproduces_the_models():
  variables, x = _mlp(0)
  chain = splits.relu_chain(
    lambda v: MLP_MODEL.apply(variables, v, train=False), jnp.zeros((1, 2))
  )
  assert chain.widths == (2, 8, 8, 2)
  np.testing.assert_allclose(
    jax.vmap(lambda p: splits.chain_logits(chain, p))(jnp.asarray(x)),
    MLP_MODEL.apply(variables, x, train=False),
    rtol=1e-5,
    atol=1e-6,
  )
  images = jax.random.uniform(jax.random.PRNGKey(1), (3, 6, 6, 1))
  cnn = _with_random_biases(
    CNN_MODEL.init(jax.random.PRNGKey(2), images, train=False), 2
  )
  chain = splits.relu_chain(
    lambda v: CNN_MODEL.apply(cnn, v, train=False), images[:1]
  )
  assert chain.widths == (36, 18, 6, 3)
  np.testing.assert_allclose(
    jax.vmap(lambda p: splits.chain_logits(chain, p))(images.reshape(3, -1)),
    CNN_MODEL.apply(cnn, images, train=False),
    rtol=1e-5,
    atol=1e-5,
  )


def test_non_chains_raise_naming_the_primitive():
  w = jnp.ones((4, 4))
  with pytest.raises(bounds.UnsupportedPrimitiveError, match="'tanh'"):
    splits.relu_chain(lambda x: jnp.tanh(x @ w), jnp.zeros((1, 4)))
  with pytest.raises(bounds.UnsupportedPrimitiveError, match="skip connection"):
    splits.relu_chain(lambda x: jax.nn.relu(x @ w) @ w + x, jnp.zeros((1, 4)))
  with pytest.raises(bounds.UnsupportedPrimitiveError, match="'mul'"):
    splits.relu_chain(lambda x: (x @ w) * x, jnp.zeros((1, 4)))
  pooled = lambda x: nn.max_pool(x, (2, 2), (2, 2)).reshape(1, -1)
  with pytest.raises(
    bounds.UnsupportedPrimitiveError, match="reduce_window_max"
  ):
    splits.relu_chain(pooled, jnp.zeros((1, 4, 4, 1)))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_unsplit_bound_matches_crown(norm):
  variables, x = _mlp(1)
  eps = {"linf": 0.2, "l2": 0.3, "l1": 0.4}[norm]
  point = jnp.asarray(x[:1])
  chain = splits.relu_chain(
    lambda v: MLP_MODEL.apply(variables, v, train=False), point
  )
  box = splits.input_set(point, eps, bab.P_OF_NORM[norm])
  intervals = splits.crown_intervals(chain, box)
  ours = splits.backward_bound(
    chain,
    box,
    jnp.eye(2),
    3,
    intervals,
    [jnp.zeros((8,)), jnp.zeros((8,))],
  ).lower
  ball = cascade.BALLS[norm](point, eps, domain=(0.0, 1.0))
  reference = bounds.crown(MLP_MODEL.apply)(variables, ball, train=False)
  np.testing.assert_allclose(ours, reference.lower[0], rtol=1e-4, atol=1e-5)


def test_split_bounds_hold_on_the_split_domain_for_any_alpha_beta():
  """Random splits, slopes and multipliers: every sampled point of the
  box obeying the splits has margins above the bound."""
  variables, x = _mlp(2)
  eps = 0.3
  point = jnp.asarray(x[:1])
  chain = splits.relu_chain(
    lambda v: MLP_MODEL.apply(variables, v, train=False), point
  )
  box = splits.input_set(point, eps, np.inf)
  intervals = splits.crown_intervals(chain, box)
  samples = jax.random.uniform(
    jax.random.PRNGKey(5), (20000, 2), minval=box.lower, maxval=box.upper
  )
  layers = _mlp_layers(variables)
  z1 = samples @ layers[0][0] + layers[0][1]
  z2 = np.maximum(z1, 0) @ layers[1][0] + layers[1][1]
  logits = np.maximum(z2, 0) @ layers[2][0] + layers[2][1]
  rows = jnp.asarray([[1.0, -1.0], [-1.0, 1.0]])
  key = jax.random.PRNGKey(7)
  checked = 0
  for trial in range(20):
    keys = jax.random.split(jax.random.fold_in(key, trial), 7)
    # Split 4 random neurons of each layer the way a random sample has them.
    sample = int(jax.random.randint(keys[0], (), 0, len(samples)))
    split = []
    for i, z in enumerate((z1, z2)):
      chosen = jax.random.permutation(keys[1 + i], 8)[:4]
      signs = np.where(z[sample] >= 0, 1.0, -1.0)
      split.append(jnp.zeros((8,)).at[chosen].set(signs[chosen]))
    alphas = [jax.random.uniform(keys[3 + i], (2, 8)) for i in range(2)]
    betas = [2.0 * jax.random.uniform(keys[5], (2, 8)) for _ in range(2)]
    lower = splits.backward_bound(
      chain, box, rows, 3, intervals, split, alphas, betas
    ).lower
    inside = np.ones(len(samples), bool)
    for z, s in zip((z1, z2), split):
      s = np.asarray(s)
      inside &= np.all((s <= 0) | (z >= 0), axis=1)
      inside &= np.all((s >= 0) | (z <= 0), axis=1)
    assert inside[sample]
    checked += 1
    margins = logits[inside] @ np.asarray(rows).T
    assert np.all(margins.min(0) >= np.asarray(lower) - 1e-5), trial
  assert checked == 20


# --------------------------------------------------------- the search


# (seed, ε, points): seeds 0 and 3 at 0.5 have points α-CROWN cannot
# certify but BaB can (exact min margins 0.02-0.03 against α-CROWN's −0.005
# to −0.03); seed 1 at 0.3 has points with counterexamples.
MLP_PROBLEMS = ((0, 0.5, 4), (3, 0.5, 4), (1, 0.3, 3))


@jax.jit
def _alpha_crown_margin(variables, point, label, eps):
  """α-CROWN's lower bound on the min margin, as the cascade's stage computes
  it (jitted: one compilation for every point, where eager α-CROWN compiles
  again for each point's number of unstable neurons)."""
  return cascade.bound_margins(
    MLP_MODEL.apply,
    variables,
    point[None],
    jnp.asarray(label)[None],
    norm="linf",
    eps=eps,
    method="alpha_crown",
    num_classes=2,
  ).min()


@pytest.fixture(scope="module")
def mlp_cases():
  """(seed, point, label, eps, exact min margin, α-CROWN's bound, BaB's
  result, variables) for the points of `MLP_PROBLEMS`."""
  cases = []
  for seed, eps, points in MLP_PROBLEMS:
    variables, x = _mlp(seed)
    for point in x[:points]:
      label = int(
        np.argmax(MLP_MODEL.apply(variables, point[None], train=False))
      )
      exact = _exact_min_margin(variables, point, label, eps)
      alpha = float(_alpha_crown_margin(variables, point, label, eps))
      result = bab.verify_point(
        MLP_MODEL.apply,
        variables,
        point,
        label,
        norm="linf",
        eps=eps,
        num_classes=2,
        settings=SETTINGS,
      )
      cases.append((seed, point, label, eps, exact, alpha, result, variables))
  return cases


def test_bab_is_sound_on_the_mlp(mlp_cases):
  for seed, point, label, eps, exact, _, result, variables in mlp_cases:
    if result.status == bab.VERIFIED:
      assert exact > -1e-5, (seed, point, eps, exact)
    if result.status == bab.FALSIFIED:
      assert exact < 1e-5
      cex = result.counterexample
      assert np.max(np.abs(cex - point)) <= eps
      assert cex.min() >= 0 and cex.max() <= 1
      assert _apply_margin(MLP_MODEL, variables, cex, label) < 0


def test_bab_decides_the_mlp_and_beats_alpha_crown(mlp_cases):
  beaten = 0
  for seed, point, _, eps, exact, alpha, result, _ in mlp_cases:
    if abs(exact) > DECIDED_BEYOND:
      assert result.status != bab.UNKNOWN, (seed, point, eps, exact)
    assert (
      result.status == (bab.VERIFIED if exact > 0 else bab.FALSIFIED)
      or abs(exact) <= DECIDED_BEYOND
    )
    beaten += alpha <= 0 < exact
  assert beaten >= 2  # points only branch and bound certifies
  statuses = [case[6].status for case in mlp_cases]
  assert bab.FALSIFIED in statuses


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.4), ("l1", 0.8)])
def test_bab_is_sound_and_decides_the_tiny_cnn(norm, eps):
  images = jax.random.uniform(jax.random.PRNGKey(11), (4, 6, 6, 1))
  variables = _with_random_biases(
    CNN_MODEL.init(jax.random.PRNGKey(3), images, train=False), 3
  )
  labels = np.asarray(
    jnp.argmax(CNN_MODEL.apply(variables, images, train=False), -1)
  )

  for image, label in zip(np.asarray(images), labels):
    result = bab.verify_point(
      CNN_MODEL.apply,
      variables,
      image,
      int(label),
      norm=norm,
      eps=eps,
      num_classes=3,
      settings=SETTINGS,
    )
    assert result.status != bab.UNKNOWN
    if result.status == bab.FALSIFIED:
      cex = result.counterexample
      distance = np.linalg.norm((cex - image).ravel(), ord=bab.P_OF_NORM[norm])
      assert distance <= eps and cex.min() >= 0 and cex.max() <= 1
      assert _apply_margin(CNN_MODEL, variables, cex, label) < 0
      continue
    # Verified: no sampled or attacked point of the set breaks it.
    centers = jnp.broadcast_to(image, (4000,) + image.shape)
    points = jnp.clip(
      centers
      + attacks.sample_ball_perturbation(
        jax.random.PRNGKey(4), centers, eps, norm=norm
      ),
      0.0,
      1.0,
    )
    attacked = attacks.pgd(
      lambda v: CNN_MODEL.apply(variables, v, train=False),
      centers[:8],
      jnp.full((8,), label),
      norm=norm,
      eps=eps,
      steps=50,
      step_size=2.5 * eps / 50,
      key=jax.random.PRNGKey(6),
      loss="margin",
    )
    points = jnp.concatenate([points, attacked])
    logits = np.asarray(CNN_MODEL.apply(variables, points, train=False))
    margins = logits[:, label] - np.delete(logits, label, axis=1).max(1)
    assert margins.min() > 0


def test_verify_point_rejects_bad_arguments():
  variables, x = _mlp(0)
  common = dict(num_classes=2, settings=SETTINGS)
  with pytest.raises(ValueError, match="norm"):
    bab.verify_point(
      MLP_MODEL.apply, variables, x[0], 0, norm="l3", eps=0.1, **common
    )
  with pytest.raises(ValueError, match="eps"):
    bab.verify_point(
      MLP_MODEL.apply, variables, x[0], 0, norm="linf", eps=-1.0, **common
    )
  with pytest.raises(ValueError, match="label"):
    bab.verify_point(
      MLP_MODEL.apply, variables, x[0], 2, norm="linf", eps=0.1, **common
    )


def test_is_counterexample_checks_membership_and_margin():
  variables, x = _mlp(0)
  point = x[0]
  label = int(np.argmax(MLP_MODEL.apply(variables, point[None], train=False)))
  check = lambda c, eps: bab.is_counterexample(
    MLP_MODEL.apply, variables, c, point, label, norm="linf", eps=eps
  )
  assert not check(point, 0.1)  # correctly classified
  assert not check(np.asarray([1.5, 0.5]), 10.0)  # outside [0, 1]
  wrong = point.copy()
  wrong_label = 1 - label
  assert not bab.is_counterexample(
    MLP_MODEL.apply,
    variables,
    wrong + 0.3,
    point,
    wrong_label,
    norm="linf",
    eps=0.1,
  )  # outside the ball
  assert bab.is_counterexample(
    MLP_MODEL.apply, variables, point, point, wrong_label, norm="linf", eps=0.0
  )
