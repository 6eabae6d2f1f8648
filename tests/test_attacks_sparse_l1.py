"""Tests for cure_jax/attacks/sparse_l1.py (sparse l1 attack, exact projection)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.attacks import losses, projected_gradient, projections, sparse_l1

# Float32 slack of ‖x' − x‖₁ ≤ ε: x + δ rounds each moved coordinate by half
# an ulp of 1, so the recomputed norm may exceed ε by a few 1e-7.
TOL = 2e-6


def _key(seed):
  return jax.random.key(seed, impl="rbg")


def _l1(delta):
  flat = np.asarray(delta, np.float64).reshape(len(delta), -1)
  return np.abs(flat).sum(1)


def _assert_in_threat_model(point, x, eps):
  eps = np.broadcast_to(np.asarray(eps, np.float64), (len(x),))
  assert np.all(_l1(point - x) <= eps + TOL), _l1(point - x) - eps
  assert np.asarray(point).min() >= 0.0 and np.asarray(point).max() <= 1.0


def _images(seed, shape=(6, 5, 5, 1)):
  """Pixels in [0, 1], many exactly 0 or 1 (as in MNIST)."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=shape)
  x = np.where(rng.uniform(size=shape) < 0.4, 0.0, x)
  x = np.where(rng.uniform(size=shape) < 0.15, 1.0, x)
  return x.astype(np.float32)


def _reference_projection(v, x, eps):
  """Π onto B1(x, ε) ∩ [0, 1]^d in float64 by bisection on θ (one example)."""
  v, x = np.asarray(v, np.float64).ravel(), np.asarray(x, np.float64).ravel()
  delta = v - x
  caps = np.where(delta >= 0, 1 - x, x)
  mass = lambda t: np.clip(np.abs(delta) - t, 0, caps).sum()
  lo, hi = 0.0, np.abs(delta).max() + 1.0
  if mass(0.0) > eps:
    for _ in range(200):
      lo, hi = (
        (lo, (lo + hi) / 2)
        if mass((lo + hi) / 2) <= eps
        else (
          (lo + hi) / 2,
          hi,
        )
      )
  else:
    hi = 0.0
  return x + np.sign(delta) * np.clip(np.abs(delta) - hi, 0, caps)


# --- the exact projection ----------------------------------------------------


def test_projection_by_hand():
  # x = (0.9, 0.5, 0.1), δ = (0.5, −0.1, −0.4): the box caps the moves at
  # u = (0.1, 0.5, 0.1), and the mass m(θ) = Σ clip(|δ_i| − θ, 0, u_i) is
  # 0.3 − θ on [0, 0.1], 0.2 on [0.1, 0.3] and 0.5 − θ on [0.3, 0.4].
  x = jnp.array([[0.9, 0.5, 0.1]])
  point = x + jnp.array([[0.5, -0.1, -0.4]])
  # ε = 0.3: θ = 0, only the box clip.
  projected = sparse_l1.project_l1_box(point, x, 0.3)
  np.testing.assert_allclose(projected, [[1.0, 0.4, 0.0]], atol=1e-6)
  # The l1 projection first (θ = 0.3: δ → (0.2, 0, −0.1)), then the clip:
  # a point of the set, but of mass 0.2 and farther away.
  naive = projections.project_l1(point, x, 0.3)
  np.testing.assert_allclose(naive, [[1.0, 0.5, 0.0]], atol=1e-6)
  # ε = 0.15: θ = 0.35, i.e. moves (0.1, 0, −0.05).
  projected = sparse_l1.project_l1_box(point, x, 0.15)
  np.testing.assert_allclose(projected, [[1.0, 0.5, 0.05]], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_matches_a_float64_bisection(seed):
  x = _images(seed)
  rng = np.random.default_rng(10 + seed)
  point = x + rng.normal(size=x.shape).astype(np.float32) * 0.4
  eps = np.array([0.0, 0.05, 0.3, 1.0, 3.0, 50.0], np.float32)
  projected = np.asarray(sparse_l1.project_l1_box(point, x, eps))
  for b in range(len(x)):
    want = _reference_projection(point[b], x[b], eps[b])
    np.testing.assert_allclose(projected[b].ravel(), want, atol=2e-6)
  _assert_in_threat_model(projected, x, eps)


def test_projection_is_the_nearest_point_of_the_intersection():
  # Variational inequality of a projection onto a convex set C:
  # ⟨v − Π(v), w − Π(v)⟩ ≤ 0 for every w ∈ C; and Π(v) is at least as near
  # to v as the l1 projection followed by a clip (also a point of C).
  x = _images(3)
  rng = np.random.default_rng(4)
  point = (x + rng.normal(size=x.shape) * 0.5).astype(np.float32)
  eps = 0.8
  projected = np.asarray(sparse_l1.project_l1_box(point, x, eps), np.float64)
  for seed in range(20):
    w = np.asarray(
      projections.project_l1(
        x + np.random.default_rng(seed).normal(size=x.shape) * 0.3, x, eps
      ),
      np.float64,
    )
    inner = ((point - projected) * (w - projected)).reshape(len(x), -1)
    assert np.all(inner.sum(1) <= 1e-5)
  naive = np.asarray(projections.project_l1(point, x, eps), np.float64)
  distance = lambda p: np.sqrt(((p - point) ** 2).reshape(len(x), -1).sum(1))
  assert np.all(distance(projected) <= distance(naive) + 1e-6)
  assert np.any(distance(projected) < distance(naive) - 1e-3)


def test_projection_keeps_inside_points_and_is_idempotent():
  x = _images(5)
  inside = np.asarray(projections.project_l1(x + 0.2, x, 0.5))
  np.testing.assert_array_equal(
    sparse_l1.project_l1_box(inside, x, 0.5), inside
  )
  once = sparse_l1.project_l1_box(x + 0.7, x, 0.5)
  np.testing.assert_allclose(
    sparse_l1.project_l1_box(once, x, 0.5), once, atol=1e-7
  )


def test_projection_without_domain_is_the_l1_ball_projection():
  x = _images(6) - 0.5
  point = x + np.random.default_rng(7).normal(size=x.shape).astype(np.float32)
  np.testing.assert_allclose(
    sparse_l1.project_l1_box(point, x, 0.6, domain=None),
    projections.project_l1(point, x, 0.6, domain=None),
    atol=1e-6,
  )


# --- the sparse step ---------------------------------------------------------


def test_top_k_direction_moves_the_k_largest_movable_coordinates():
  grad = jnp.array([[3.0, -5.0, 1.0, -2.0], [0.5, 4.0, -1.0, 2.0]])
  x_adv = jnp.array([[0.5, 0.0, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]])
  direction = sparse_l1.top_k_direction(grad, x_adv, jnp.array([2, 3]))
  # Row 0: coordinate 1 sits on 0 with g < 0 (cannot move): top 2 of the
  # rest are 0 and 3. Row 1: top 3 are 1, 3, 2.
  np.testing.assert_allclose(
    direction, [[0.5, 0.0, 0.0, -0.5], [0.0, 1 / 3, -1 / 3, 1 / 3]]
  )
  np.testing.assert_allclose(np.abs(direction).sum(1), 1.0)
  stuck = sparse_l1.top_k_direction(
    jnp.array([[-1.0, 1.0]]), jnp.array([[0.0, 1.0]]), jnp.array([1])
  )
  np.testing.assert_array_equal(stuck, 0.0)


def test_checkpoints_by_hand():
  # n = 20: first interval 4, shorter by 1 down to 1.
  assert sparse_l1.checkpoints(20) == (4, 7, 9, 10, 11, 12, 13) + tuple(
    range(14, 21)
  )
  # n = 100: 22, then +19, +16, +13, +10, +7, +6, +6.
  assert sparse_l1.checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
  assert sparse_l1.checkpoints(1) == (1,)


# --- the attack --------------------------------------------------------------


def _mlp(seed, shape=(5, 5, 1), classes=4, batch=16, hidden=32, scale=3.0):
  """A small ReLU MLP on [B, *shape] images, with its data."""
  rng = np.random.default_rng(seed)
  dim = int(np.prod(shape))
  w1 = rng.normal(size=(dim, hidden)).astype(np.float32) * scale / np.sqrt(dim)
  b1 = rng.normal(size=hidden).astype(np.float32) * 0.5
  w2 = rng.normal(size=(hidden, classes)).astype(np.float32)
  x = _images(seed, (batch,) + shape)
  y = rng.integers(0, classes, size=batch)
  logits_fn = lambda z: jax.nn.relu(z.reshape(z.shape[0], -1) @ w1 + b1) @ w2
  return logits_fn, x, y


def _cnn(seed, batch=16, classes=4):
  """A small ReLU CNN on [B, 8, 8, 1] images, with its data."""
  rng = np.random.default_rng(seed)
  kernel = rng.normal(size=(3, 3, 1, 4)).astype(np.float32)
  dense = rng.normal(size=(4 * 16, classes)).astype(np.float32) / 4
  x = _images(seed, (batch, 8, 8, 1))
  y = rng.integers(0, classes, size=batch)

  def logits_fn(z):
    h = jax.lax.conv_general_dilated(
      z, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.nn.relu(h).reshape(z.shape[0], -1) @ dense

  return logits_fn, x, y


SPARSE_STATIC = ("steps", "restarts", "loss", "random_start", "domain")
# A rolled loop (a scan) compiles one step where the default unrolls short
# attacks into one copy per step, several times the compilation; rolled and
# unrolled attacks agree (`test_rolled_restarts_match_unrolled`).
ROLLED = dict(unroll=False)


def _jit_sparse(logits_fn, **fixed):
  return jax.jit(
    functools.partial(sparse_l1.sparse_l1_attack, logits_fn, **fixed),
    static_argnames=SPARSE_STATIC,
  )


def _jit_dense(logits_fn, **fixed):
  return jax.jit(
    functools.partial(projected_gradient.pgd, logits_fn, **fixed),
    static_argnames=("norm", "steps", "l1_sparsity"),
  )


def _mean_loss(logits_fn, x_adv, y):
  return float(losses.cross_entropy(logits_fn(x_adv), y).mean())


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_every_iterate_stays_in_the_ball_and_box(loss):
  model, x, y = _mlp(0)
  queried = []

  def recording_model(z):
    jax.debug.callback(lambda v: queried.append(np.asarray(v)), z)
    return model(z)

  eps = np.linspace(0.0, 2.5, len(x)).astype(np.float32)
  x_adv = _jit_sparse(recording_model, **ROLLED)(
    x, y, eps=eps, steps=6, restarts=2, key=_key(1), loss=loss
  )
  jax.effects_barrier()
  # The clean point, and per restart its start and every step.
  assert len(queried) == 1 + 2 * (1 + 6)
  for point in queried + [np.asarray(x_adv)]:
    _assert_in_threat_model(point, x, eps)
  clean = losses.get_attack_loss(loss)(model(x), y)
  attacked = losses.get_attack_loss(loss)(model(x_adv), y)
  assert np.all(attacked >= clean - 1e-5)  # Eager vs jitted rounding.
  assert np.all((attacked > clean + 1e-3)[eps > 0.5])


@pytest.mark.parametrize("make_model", [_mlp, _cnn])
def test_sparse_beats_dense_pgd_with_the_same_budget(make_model):
  # Dense l1 steps spread the budget over every pixel, where the worst case
  # is sparse; with the same steps, start and radius the sparse attack finds
  # clearly higher losses (measured: +0.18 to +0.5 nats here).
  model, x, y = make_model(2)
  budget = dict(eps=1.0, steps=10, key=_key(3))
  dense = _jit_dense(model, **ROLLED)(
    x, y, norm="l1", step_size=0.25, l1_sparsity=0.0, **budget
  )
  sparse = _jit_sparse(model, **ROLLED)(x, y, **budget)
  gain = _mean_loss(model, sparse, y) - _mean_loss(model, dense, y)
  print(f"sparse - dense mean CE: {gain:.3f}")
  assert gain > 0.1, gain


def test_single_coordinate_optimum_of_a_linear_model():
  # logits (w_0·x, w_1·x) with w_0 − w_1 = d: the loss of label 0 grows
  # along −d, and over B1(x, ε) ∩ [0, 1]^d (x = ½, ε = 0.3 < ½) the optimum
  # moves the coordinate of largest |d_i| alone by ε.
  rng = np.random.default_rng(8)
  d = rng.normal(size=12).astype(np.float32) * 0.1
  d[7] = 2.0
  weights = np.stack([d, np.zeros_like(d)], 1)
  logits_fn = lambda z: z.reshape(z.shape[0], -1) @ weights
  x = np.full((3, 12), 0.5, np.float32)
  y = np.zeros(3, np.int32)
  optimum = x.copy()
  optimum[:, 7] -= 0.3
  attack = _jit_sparse(logits_fn, **ROLLED)
  exact = attack(x, y, eps=0.3, steps=4, random_start=False)
  np.testing.assert_allclose(exact, optimum, atol=1e-6)
  started = attack(x, y, eps=0.3, steps=10, key=_key(9))
  np.testing.assert_allclose(started, optimum, atol=2e-3)


def test_strongest_l1_keeps_the_worse_point_per_example():
  model, x, y = _mlp(4)
  key = _key(5)
  strongest = jax.jit(
    functools.partial(sparse_l1.strongest_l1, model), static_argnames="steps"
  )
  # 3 steps (each unrolled, compiled once inside strongest_l1 and once
  # alone): each attack already wins on some examples.
  both = strongest(x, y, eps=1.0, key=key, steps=3)
  dense_key, sparse_key = jax.random.split(key)
  dense = _jit_dense(model)(
    x, y, norm="l1", eps=1.0, steps=3, step_size=2.5 / 3, key=dense_key
  )
  sparse = _jit_sparse(model)(x, y, eps=1.0, steps=3, key=sparse_key)
  per_example = lambda p: np.asarray(losses.cross_entropy(model(p), y))
  dense_loss, sparse_loss = per_example(dense), per_example(sparse)
  assert np.any(dense_loss > sparse_loss) and np.any(sparse_loss > dense_loss)
  np.testing.assert_allclose(
    per_example(both), np.maximum(dense_loss, sparse_loss), rtol=1e-6
  )
  _assert_in_threat_model(both, x, 1.0)


def test_jit_matches_eager():
  # The pieces agree to rounding on the CNN; the whole attack is compared on
  # the MLP: on a strided CNN many pixels have gradients of exactly equal
  # magnitude, and rounding then breaks top-k ties differently.
  model, x, y = _cnn(6, batch=4)
  rng = np.random.default_rng(0)
  point = x + rng.normal(size=x.shape).astype(np.float32) * 0.3
  np.testing.assert_allclose(
    jax.jit(sparse_l1.project_l1_box)(point, x, 0.7),
    sparse_l1.project_l1_box(point, x, 0.7),
    atol=1e-6,
  )
  grad = jax.grad(lambda z: losses.cross_entropy(model(z), y).sum())(point)
  k = jnp.array([1, 3, 10, 64])
  np.testing.assert_array_equal(
    jax.jit(sparse_l1.top_k_direction)(grad, point, k),
    sparse_l1.top_k_direction(grad, point, k),
  )
  model, x, y = _mlp(5, batch=4)
  attack = functools.partial(  # Short: eager op-by-op dispatch is slow.
    sparse_l1.sparse_l1_attack, model, eps=0.7, steps=3, key=_key(7)
  )
  np.testing.assert_allclose(jax.jit(attack)(x, y), attack(x, y), atol=1e-6)


def test_rolled_restarts_match_unrolled():
  model, x, y = _mlp(7, batch=4)
  attack = jax.jit(
    functools.partial(
      sparse_l1.sparse_l1_attack, model, steps=3, restarts=3, key=_key(8)
    ),
    static_argnames="unroll",
  )
  np.testing.assert_allclose(
    attack(x, y, eps=0.5, unroll=False),
    attack(x, y, eps=0.5, unroll=True),
    atol=1e-6,
  )


def test_bad_arguments_raise_clear_errors():
  model, x, y = _mlp(0, batch=2)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    sparse_l1.sparse_l1_attack(model, x, y, eps=1.0)
  with pytest.raises(ValueError, match="steps must be an int >= 1"):
    sparse_l1.sparse_l1_attack(model, x, y, eps=1.0, steps=0, key=_key(0))
  with pytest.raises(ValueError, match="one integer label per example"):
    sparse_l1.sparse_l1_attack(model, x, y[:1], eps=1.0, key=_key(0))
  with pytest.raises(ValueError, match="Unknown attack loss"):
    sparse_l1.sparse_l1_attack(model, x, y, eps=1.0, key=_key(0), loss="l1")
  with pytest.raises(ValueError, match="eps must be non-negative"):
    sparse_l1.sparse_l1_attack(model, x, y, eps=-1.0, key=_key(0))
  with pytest.raises(ValueError, match="restarts > 1"):
    sparse_l1.sparse_l1_attack(
      model, x, y, eps=1.0, restarts=2, random_start=False
    )
