"""Tests for cure_jax/attacks/projected_gradient.py (PGD)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.attacks import losses, projected_gradient
from cure_jax.attacks.projected_gradient import BestIterate, pgd

TOL = 1e-6
STATIC = (
  "norm",
  "steps",
  "restarts",
  "random_start",
  "loss",
  "domain",
  "l1_sparsity",
)


def _key(seed):
  # RBG keys compile several times faster than threefry on CPU; the attacks
  # take any key implementation (test_attacks_sabr.py uses the default).
  return jax.random.key(seed, impl="rbg")


def _jit_pgd(logits_fn):
  """PGD jitted over arrays, with the options static (as a caller would)."""
  return jax.jit(functools.partial(pgd, logits_fn), static_argnames=STATIC)


def _norm(delta, norm):
  """Per-example l_p norm in float64 (independent of the library)."""
  flat = np.asarray(delta, np.float64).reshape(len(delta), -1)
  return {
    "linf": np.abs(flat).max(1),
    "l2": np.sqrt((flat**2).sum(1)),
    "l1": np.abs(flat).sum(1),
  }[norm]


def _linear_model(seed, shape=(2, 3, 2)):
  """A binary linear classifier on [B, *shape] inputs, with its data."""
  rng = np.random.default_rng(seed)
  dim = int(np.prod(shape))
  weights = rng.normal(size=(dim, 2)).astype(np.float32)
  bias = rng.normal(size=2).astype(np.float32)
  x = rng.uniform(size=(8,) + shape).astype(np.float32)
  y = rng.integers(0, 2, size=8)
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ weights + bias
  # Both CE and the margin decrease in (w_y − w_j)·x: the worst case moves
  # against d = w_y − w_j.
  d = (weights[:, y] - weights[:, 1 - y]).T.reshape(x.shape)
  return logits_fn, x, y, d


def _mlp(seed, shape=(3, 4), classes=4, batch=16):
  """A small tanh MLP on [B, *shape] inputs, with its data."""
  rng = np.random.default_rng(seed)
  dim = int(np.prod(shape))
  w1 = rng.normal(size=(dim, 16)).astype(np.float32) * 2 / np.sqrt(dim)
  w2 = rng.normal(size=(16, classes)).astype(np.float32)
  x = rng.uniform(size=(batch,) + shape).astype(np.float32)
  y = rng.integers(0, classes, size=batch)
  logits_fn = lambda z: jnp.tanh(z.reshape(z.shape[0], -1) @ w1) @ w2
  return logits_fn, x, y


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jitted_loss(logits_fn, x, y, loss):
  return losses.get_attack_loss(loss)(logits_fn(x), y)


def _loss(logits_fn, x, y, loss):
  return np.asarray(_jitted_loss(logits_fn, x, y, loss))


# Every norm with and without the domain clip, and with both losses.
@pytest.mark.parametrize(
  "norm, domain, loss",
  [
    ("linf", (0.0, 1.0), "ce"),
    ("linf", None, "margin"),
    ("l2", (0.0, 1.0), "margin"),
    ("l2", None, "ce"),
    ("l1", (0.0, 1.0), "ce"),
    ("l1", None, "margin"),
  ],
)
def test_queried_points_stay_in_the_ball_and_best_beats_clean(
  norm, domain, loss
):
  model, x, y = _mlp(0)
  queried = []

  def recording_model(z):
    jax.debug.callback(lambda v: queried.append(np.asarray(v)), z)
    return model(z)

  eps = np.linspace(0.0, 1.5, len(x)).astype(np.float32)
  x_adv = _jit_pgd(recording_model)(
    x,
    y,
    norm=norm,
    eps=eps,
    steps=4,
    step_size=eps,
    restarts=2,
    key=_key(1),
    domain=domain,
    loss=loss,
  )
  jax.effects_barrier()
  assert len(queried) == 1 + 2 * (4 + 1)  # Clean + each restart's iterates.
  for point in queried + [np.asarray(x_adv)]:
    assert np.all(_norm(point - x, norm) <= eps + TOL)
    if domain is not None:
      assert point.min() >= 0.0 and point.max() <= 1.0
  # The output is, per example, the best queried point (highest loss; for the
  # margin, misclassified first; ties keep the earlier point)...
  scores = np.stack([_loss(model, q, y, loss) for q in queried]).astype(float)
  if loss == "margin":
    wrong = np.stack([losses.misclassified(model(q), y) for q in queried])
    scores = np.where(wrong, 1e6 + scores, scores)
  best = np.stack(queried)[scores.argmax(0), np.arange(len(x))]
  np.testing.assert_array_equal(x_adv, best)
  # ... so it is never worse than the clean point (queried first), and better
  # wherever the radius is not tiny.
  clean, attacked = _loss(model, x, y, loss), _loss(model, x_adv, y, loss)
  assert np.all(attacked >= clean)
  assert np.all((attacked > clean + 1e-3)[eps > 0.3])
  if loss == "margin":  # A misclassified clean point stays misclassified.
    was_wrong = np.asarray(losses.misclassified(model(x), y))
    assert np.all(losses.is_adversarial(model, x_adv, y)[was_wrong])


def test_linf_finds_the_analytic_worst_case_of_a_linear_model():
  logits_fn, x, y, d = _linear_model(1)
  # From anywhere in the box, 4 steps of ε/2 reach the worst corner.
  x_adv = _jit_pgd(logits_fn)(
    x, y, norm="linf", eps=0.1, steps=5, step_size=0.05, key=_key(2)
  )
  np.testing.assert_allclose(
    x_adv, np.clip(x - 0.1 * np.sign(d), 0, 1), atol=TOL
  )


def test_l2_finds_the_analytic_worst_case_of_a_linear_model():
  logits_fn, x, y, d = _linear_model(3)
  unit = d / _norm(d, "l2").reshape(-1, 1, 1, 1)
  attack = _jit_pgd(logits_fn)
  # From x, the steps follow −d and the projection stops them on the sphere.
  x_adv = attack(
    x,
    y,
    norm="l2",
    eps=0.5,
    steps=4,
    step_size=0.2,
    random_start=False,
    domain=None,
  )
  np.testing.assert_allclose(x_adv, x - 0.5 * unit, atol=TOL)
  # From a random start the iterates converge to the same point, until the
  # loss gains drop below float32 resolution and the best iterate stops
  # changing (the angle error θ costs only O(θ²) loss).
  x_adv = attack(
    x, y, norm="l2", eps=0.5, steps=40, step_size=0.25, key=_key(4), domain=None
  )
  np.testing.assert_allclose(x_adv, x - 0.5 * unit, atol=1e-3)
  np.testing.assert_allclose(
    _loss(logits_fn, x_adv, y, "ce"),
    _loss(logits_fn, x - 0.5 * unit, y, "ce"),
    rtol=1e-6,
  )


def test_l1_finds_the_best_vertex_of_a_linear_model():
  logits_fn, x, y, d = _linear_model(5)
  flat = d.reshape(len(d), -1)
  vertex = np.zeros_like(flat)
  top = np.abs(flat).argmax(1)
  vertex[np.arange(len(d)), top] = -np.sign(flat[np.arange(len(d)), top])
  x_adv = _jit_pgd(logits_fn)(
    x,
    y,
    norm="l1",
    eps=0.7,
    steps=3,
    step_size=0.7,
    random_start=False,
    domain=None,
  )
  np.testing.assert_allclose(x_adv, x + 0.7 * vertex.reshape(x.shape), atol=TOL)


def test_keeps_the_best_iterate_not_the_last():
  # y = 0, margin = f(t) = −(t − 0.3)^2. From t = 0 with steps of 0.5 the
  # iterates alternate 0, 0.5, 0, 0.5, 0: the last is 0 (f = −0.09), the
  # best is 0.5 (f = −0.04).
  logits_fn = lambda t: jnp.concatenate(
    [jnp.zeros_like(t), -((t - 0.3) ** 2)], 1
  )
  x_adv = _jit_pgd(logits_fn)(
    np.zeros((1, 1), np.float32),
    np.array([0]),
    norm="linf",
    eps=1.0,
    steps=4,
    step_size=0.5,
    random_start=False,
    loss="margin",
    domain=None,
  )
  np.testing.assert_array_equal(x_adv, [[0.5]])


def test_keep_better_ranks_misclassified_points_first_for_the_margin():
  best = BestIterate(
    jnp.zeros((3, 1)),
    jnp.array([0.0, 2.0, 1.0]),
    jnp.array([False, False, True]),
  )
  candidate = BestIterate(
    jnp.ones((3, 1)), jnp.array([0.0, 1.0, 3.0]), jnp.array([True, True, False])
  )
  by_loss = projected_gradient.keep_better(best, candidate, False)
  np.testing.assert_array_equal(by_loss.x[:, 0], [0.0, 0.0, 1.0])
  misclassified_first = projected_gradient.keep_better(best, candidate, True)
  np.testing.assert_array_equal(misclassified_first.x[:, 0], [1.0, 1.0, 0.0])
  np.testing.assert_array_equal(misclassified_first.loss, [0.0, 1.0, 1.0])


def test_per_example_radius_and_zero_radius():
  logits_fn, x, y = _mlp(10, batch=4)
  eps = np.array([0.0, 0.1, 0.2, 0.4], np.float32)
  x_adv = np.asarray(
    _jit_pgd(logits_fn)(
      x, y, norm="linf", eps=eps, steps=3, step_size=eps / 2, key=_key(11)
    )
  )
  np.testing.assert_array_equal(x_adv[0], x[0])
  assert np.all(_norm(x_adv - x, "linf") <= eps + TOL)


def test_jit_matches_eager():
  logits_fn, x, y = _mlp(12, batch=4)
  kwargs = dict(
    norm="l1", eps=0.3, steps=2, step_size=0.2, key=_key(13), loss="margin"
  )
  np.testing.assert_allclose(
    pgd(logits_fn, x, y, **kwargs),
    _jit_pgd(logits_fn)(x, y, **kwargs),
    atol=1e-6,
  )


def test_vmap_over_radii_matches_a_loop():
  logits_fn, x, y = _mlp(14, batch=4)
  attack = lambda eps: pgd(
    logits_fn,
    x,
    y,
    norm="l2",
    eps=eps,
    steps=2,
    step_size=eps / 2,
    key=_key(15),
  )
  radii = np.array([0.1, 0.5, 1.0], np.float32)
  batched = jax.jit(jax.vmap(attack))(radii)
  for i, eps in enumerate(radii):
    np.testing.assert_allclose(batched[i], jax.jit(attack)(eps), atol=1e-6)


def test_bad_arguments_raise_clear_errors():
  logits_fn, x, y = _mlp(16, batch=2)
  key = _key(0)
  ok = dict(norm="linf", eps=0.1, steps=2, step_size=0.05, key=key)
  cases = [
    (dict(norm="l3"), "Unknown norm 'l3'"),
    (dict(loss="hinge"), "Unknown attack loss 'hinge'"),
    (dict(eps=-0.1), "eps must be non-negative"),
    (dict(eps=np.ones(3)), r"eps of shape \(3,\) does not fit"),
    (dict(step_size=-1.0), "step_size must be non-negative"),
    (dict(steps=-1), "steps must be an int >= 0"),
    (dict(restarts=0), "restarts must be an int >= 1"),
    (dict(key=None), "random_start=True needs a PRNG key"),
    (dict(restarts=2, random_start=False), "set random_start=True"),
    (dict(domain=(1.0, 0.0)), "domain lower bound 1.0 exceeds"),
    (dict(l1_sparsity=1.5), r"l1_sparsity must lie in \[0, 1\)"),
    (dict(step_decay=lambda t: -1.0), "step_decay must be non-negative"),
  ]
  for override, message in cases:
    with pytest.raises(ValueError, match=message):
      pgd(logits_fn, x, y, **{**ok, **override})
  with pytest.raises(ValueError, match="one integer label per example"):
    pgd(logits_fn, x, y[:1], **ok)
  with pytest.raises(ValueError, match="one integer label per example"):
    pgd(logits_fn, x, y.astype(np.float32), **ok)
  with pytest.raises(ValueError, match="x must be floating point"):
    pgd(logits_fn, (x * 255).astype(np.uint8), y, **ok)
