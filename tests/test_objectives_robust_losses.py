"""Tests for cure_jax.objectives.robust_losses."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import attacks
from cure_jax.bounds import Box, Interval
from cure_jax.bounds.sets import LpBall
from cure_jax.models import MLP, ConvNet
from cure_jax.objectives import robust_losses
from cure_jax.objectives.base import Network, cross_entropy

# Slack for float32 comparisons of coordinates in [0, 1].
TOL = 1e-6


def _linear_apply(variables, x, train=False):
  """logits = x W: a network whose bounds are known in closed form."""
  del train
  return x.reshape(x.shape[0], -1) @ variables["params"]["w"]


def _mlp_network(num_classes=4, seed=0):
  model = MLP(num_classes=num_classes, hidden_widths=(16, 16))
  variables = model.init(
    jax.random.key(seed), jnp.zeros((1, 6, 6, 1)), train=False
  )
  return Network(model.apply, variables, num_classes)


def _images_with_borders(seed, shape=(5, 6, 6, 1)):
  """Random pixels, a third of them exactly 0 or 1 (as in MNIST)."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=shape)
  x = np.where(rng.uniform(size=shape) < 0.2, 0.0, x)
  x = np.where(rng.uniform(size=shape) < 0.15, 1.0, x)
  return jnp.asarray(x, jnp.float32)


def test_small_box_by_hand():
  # Big boxes (ε = 0.1): [0, 0.1], [0.4, 0.6], [0.87, 1]; τ = 0.06.
  x = jnp.array([[0.0, 0.5, 0.97]])
  adversarial = jnp.array([[0.1, 0.45, 0.87]])
  center = robust_losses.small_box_center(adversarial, x, 0.1, 0.06)
  # Pixel 0: [lo + τ, hi − τ] = [0.06, 0.04] is empty, c = lo + τ.
  np.testing.assert_allclose(center, [[0.06, 0.46, 0.93]], atol=TOL)
  box = robust_losses.small_box(adversarial, x, 0.1, 0.06)
  # Pixel 0 is cut to the big box [0, 0.1] (not [0, 0.12]).
  np.testing.assert_allclose(box.lower, [[0.0, 0.40, 0.87]], atol=TOL)
  np.testing.assert_allclose(box.upper, [[0.1, 0.52, 0.99]], atol=TOL)


@pytest.mark.parametrize("lam", [0.1, 0.4, 0.6, 1.0])
@pytest.mark.parametrize("per_example_eps", [False, True])
def test_small_box_lies_in_the_big_box_and_the_domain(lam, per_example_eps):
  x = _images_with_borders(1)
  eps = (
    jnp.array([0.0, 0.05, 0.1, 0.3, 0.7])
    if per_example_eps
    else jnp.float32(0.3)
  )
  eps_b = jnp.broadcast_to(jnp.reshape(eps, (-1, 1, 1, 1)), x.shape)
  # Attack points anywhere, also far outside the big box.
  adversarial = x + jax.random.uniform(
    jax.random.key(2), x.shape, minval=-1.0, maxval=1.0
  )
  box = robust_losses.small_box(adversarial, x, eps, lam * eps)
  lo, hi = jnp.clip(x - eps_b, 0, 1), jnp.clip(x + eps_b, 0, 1)
  assert jnp.all(box.lower >= lo - TOL) and jnp.all(box.upper <= hi + TOL)
  assert jnp.all(box.lower <= box.upper)
  # Where the big box is wide enough the small box keeps its full size 2τ.
  fits = hi - lo >= 2 * lam * eps_b
  width = box.upper - box.lower
  np.testing.assert_allclose(
    jnp.where(fits, width, 2 * lam * eps_b), 2 * lam * eps_b, atol=1e-5
  )


def test_small_box_center_keeps_an_attack_point_that_fits():
  x = jnp.full((1, 4), 0.5)
  adversarial = jnp.array([[0.42, 0.5, 0.55, 0.58]])
  center = robust_losses.small_box_center(adversarial, x, 0.1, 0.02)
  np.testing.assert_allclose(center, adversarial, atol=TOL)


def test_ibp_linf_by_hand_on_a_linear_network():
  # logits z_k = w_k·x with w_0 = (1, 0), w_1 = (0, 1), w_2 = (−1, 1);
  # label 0 at x = (½, ½), ε = 0.1: margins z_0 − z_1 = (1, −1)·x and
  # z_0 − z_2 = (2, −1)·x are 0 and ½, lowered by ε‖·‖₁ = 0.2 and 0.3.
  w = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
  network = Network(_linear_apply, {"params": {"w": w}}, 3)
  robust = robust_losses.ibp_linf(
    network, jnp.array([[0.5, 0.5]]), jnp.array([0]), 0.1
  )
  np.testing.assert_allclose(robust.logits, [[0.0, 0.2, -0.2]], atol=TOL)
  expected = math.log(1 + math.exp(0.2) + math.exp(-0.2))
  np.testing.assert_allclose(robust.loss, [expected], rtol=1e-6)
  assert not robust.certified[0]
  certified = robust_losses.ibp_linf(
    network, jnp.array([[0.5, 0.5]]), jnp.array([0]), 0.0
  )
  assert not certified.certified[0]  # margin z_0 − z_1 is exactly 0
  shifted = robust_losses.ibp_linf(
    network, jnp.array([[0.9, 0.1]]), jnp.array([0]), 0.1
  )
  assert shifted.certified[0]  # lower bounds 0.6 and 1.4


def test_sabr_with_lambda_one_is_ibp():
  network = _mlp_network()
  x = _images_with_borders(3)
  labels = jnp.array([0, 1, 2, 3, 0])
  ibp = robust_losses.ibp_linf(network, x, labels, 0.1)
  sabr = robust_losses.sabr_linf(
    network, x, labels, 0.1, lam=1.0, key=jax.random.key(0), pgd_steps=3
  )
  np.testing.assert_allclose(sabr.loss, ibp.loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sabr.logits, ibp.logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(sabr.certified, ibp.certified)


@pytest.mark.parametrize("lam", [0.4, 0.6])
def test_sabr_loss_is_at_most_the_ibp_loss(lam):
  # The small box lies in the big one and IBP is monotone under inclusion,
  # so every SABR margin bound is at least the IBP one.
  network = _mlp_network(seed=1)
  x = _images_with_borders(4)
  labels = jnp.array([3, 2, 1, 0, 1])
  ibp = robust_losses.ibp_linf(network, x, labels, 0.2)
  sabr = robust_losses.sabr_linf(
    network, x, labels, 0.2, lam=lam, key=jax.random.key(1), pgd_steps=3
  )
  assert jnp.all(sabr.loss <= ibp.loss + 1e-5)
  assert jnp.all(sabr.logits <= ibp.logits + 1e-5)  # o = −lb


@pytest.mark.parametrize("lam", [1e-5, 0.3, 1.0])
def test_small_l2_ball_lies_in_the_big_ball(lam):
  x = _images_with_borders(5)
  eps = jnp.array([0.1, 0.5, 1.0, 2.0, 3.0])
  adversarial = x + 3.0 * jax.random.normal(jax.random.key(3), x.shape)
  ball = robust_losses.small_l2_ball(adversarial, x, eps, lam)
  assert isinstance(ball, LpBall) and ball.p == 2 and ball.domain == (0, 1)
  distance = jnp.sqrt(jnp.sum((ball.center - x) ** 2, axis=(1, 2, 3)))
  assert jnp.all(distance + ball.eps <= eps * (1 + 1e-5))
  np.testing.assert_allclose(ball.eps, lam * eps, rtol=1e-6)
  assert jnp.all((ball.center >= 0) & (ball.center <= 1))


class _RecordingNetwork:
  """Records the input set it is asked to bound; all bounds are 0."""

  num_classes = 3

  def __init__(self):
    self.input_set = None

  def logits(self, x):
    return jnp.zeros((x.shape[0], self.num_classes))

  def margin_bounds(self, input_set, labels, transform=None):
    del transform
    self.input_set = input_set
    zeros = jnp.zeros((labels.shape[0], self.num_classes - 1))
    return Interval(zeros, zeros)

  def margin_bounds_and_stats(self, input_set, labels, transform=None):
    return self.margin_bounds(input_set, labels, transform), None


def _bounded_region(monkeypatch, attack, loss_fn, x, adversarial, eps):
  """The input set ``loss_fn`` (λ = 0.25, labels [0, 1]) bounds at ``x``
  when its ``attack`` returns ``adversarial``."""
  monkeypatch.setattr(robust_losses, attack, lambda *a, **k: adversarial)
  network = _RecordingNetwork()
  loss_fn(
    network,
    x,
    jnp.array([0, 1]),
    eps,
    lam=0.25,
    key=jax.random.key(0),
    pgd_steps=1,
  )
  return network.input_set


def test_l2_certified_bounds_the_small_ball(monkeypatch):
  x = jnp.full((2, 4), 0.5)
  far = x + jnp.array([[3.0, 0, 0, 0], [0, 0, 0, 0.05]])  # out, in the ball
  ball = _bounded_region(
    monkeypatch, "sabr_attack", robust_losses.l2_certified, x, far, 0.2
  )
  assert isinstance(ball, LpBall) and ball.p == 2
  # Projected onto B2(x, 0.15), so the ball of radius 0.05 fits.
  np.testing.assert_allclose(ball.center[0], [0.65, 0.5, 0.5, 0.5], atol=TOL)
  np.testing.assert_allclose(ball.center[1], far[1], atol=TOL)
  np.testing.assert_allclose(ball.eps, 0.05, rtol=1e-6)


def test_sabr_linf_bounds_the_small_box(monkeypatch):
  x = jnp.array([[0.0, 0.5]])
  monkeypatch.setattr(
    robust_losses, "sabr_attack", lambda *a, **k: jnp.array([[0.1, 0.3]])
  )
  network = _RecordingNetwork()
  robust_losses.sabr_linf(
    network, x, jnp.array([0]), 0.1, lam=0.5, key=jax.random.key(0), pgd_steps=1
  )
  box = network.input_set
  assert isinstance(box, Box)
  np.testing.assert_allclose(box.lower, [[0.0, 0.4]], atol=TOL)
  np.testing.assert_allclose(box.upper, [[0.1, 0.5]], atol=TOL)


def test_l2_sabr_box_is_almost_cross_entropy_at_the_attack_point(monkeypatch):
  network = _mlp_network(seed=2)
  x = _images_with_borders(6)
  labels = jnp.array([0, 1, 2, 3, 0])
  point = jnp.clip(
    x + 0.05 * jax.random.normal(jax.random.key(4), x.shape), 0, 1
  )
  monkeypatch.setattr(robust_losses, "sabr_attack", lambda *a, **k: point)
  robust = robust_losses.l2_sabr_box(
    network, x, labels, 0.5, lam=1e-5, key=jax.random.key(0), pgd_steps=1
  )
  np.testing.assert_allclose(
    robust.loss, cross_entropy(network.logits(point), labels), atol=1e-3
  )


# --- l1 -----------------------------------------------------------------------


def _cnn_network(num_classes=4, seed=0):
  model = ConvNet(
    num_classes=num_classes,
    conv_widths=(4, 4),
    conv_strides=(1, 2),
    dense_widths=(16,),
    batch_norm=False,
  )
  variables = model.init(
    jax.random.key(seed), jnp.zeros((1, 6, 6, 1)), train=False
  )
  return Network(model.apply, variables, num_classes)


def _linear_network():
  # z_k = w_k·x, w_0 = (1, 0), w_1 = (0, 1), w_2 = (−1, 1): the margins
  # z_0 − z_1 and z_0 − z_2 have weights (1, −1) and (2, −1).
  w = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
  return Network(_linear_apply, {"params": {"w": w}}, 3)


# At x = (½, ½), label 0, the margins are 0 and ½. Over B1(x, 0.1) the dual
# norm lowers them by 0.1·‖(1, −1)‖∞ = 0.1 and 0.1·‖(2, −1)‖∞ = 0.2 (the
# bounding box [0.4, 0.6]² would lower them by 0.2 and 0.3): lb = (−0.1,
# 0.3), o = [0, 0.1, −0.3].
HAND_L1_LOGITS = [[0.0, 0.1, -0.3]]


def test_l1_crown_ibp_by_hand_on_a_linear_network():
  robust = robust_losses.l1_crown_ibp(
    _linear_network(), jnp.array([[0.5, 0.5]]), jnp.array([0]), 0.1
  )
  np.testing.assert_allclose(robust.logits, HAND_L1_LOGITS, atol=TOL)
  expected = math.log(1 + math.exp(0.1) + math.exp(-0.3))
  np.testing.assert_allclose(robust.loss, [expected], rtol=1e-6)
  assert not robust.certified[0]
  shifted = robust_losses.l1_crown_ibp(
    _linear_network(), jnp.array([[0.7, 0.3]]), jnp.array([0]), 0.1
  )
  assert shifted.certified[0]  # lb = (0.4 − 0.1, 1.1 − 0.2)


def test_l1_certified_by_hand_on_a_linear_network(monkeypatch):
  # The attack stays at x: the small ball B1(x, λ·ε) = B1(x, 0.1).
  x = jnp.array([[0.5, 0.5]])
  monkeypatch.setattr(robust_losses, "strongest_l1", lambda *a, **k: x)
  robust = robust_losses.l1_certified(
    _linear_network(),
    x,
    jnp.array([0]),
    0.2,
    lam=0.5,
    key=jax.random.key(0),
    pgd_steps=1,
  )
  np.testing.assert_allclose(robust.logits, HAND_L1_LOGITS, atol=TOL)


@pytest.mark.parametrize("lam", [0.05, 0.5, 1.0])
def test_small_l1_ball_lies_in_the_big_ball(lam):
  x = _images_with_borders(7)
  eps = jnp.array([0.1, 0.5, 1.0, 2.0, 3.0])
  adversarial = x + 2.0 * jax.random.normal(jax.random.key(5), x.shape)
  ball = robust_losses.small_l1_ball(adversarial, x, eps, lam)
  assert isinstance(ball, LpBall) and ball.p == 1 and ball.domain == (0, 1)
  distance = jnp.sum(jnp.abs(ball.center - x), axis=(1, 2, 3))
  assert jnp.all(distance + ball.eps <= eps * (1 + 1e-5))
  np.testing.assert_allclose(ball.eps, lam * eps, rtol=1e-6)
  assert jnp.all((ball.center >= 0) & (ball.center <= 1))


def test_l1_certified_bounds_the_small_ball(monkeypatch):
  x = jnp.full((2, 4), 0.5)
  far = x + jnp.array([[3.0, 0, 0, 0], [0, 0, 0, -0.05]])  # out, in the ball
  ball = _bounded_region(
    monkeypatch, "strongest_l1", robust_losses.l1_certified, x, far, 0.4
  )
  assert isinstance(ball, LpBall) and ball.p == 1
  # Projected onto B1(x, 0.3) ∩ [0, 1]: the pixel moves by 0.3 (its box cap
  # is 0.5), so the ball of radius 0.1 fits.
  np.testing.assert_allclose(ball.center[0], [0.8, 0.5, 0.5, 0.5], atol=TOL)
  np.testing.assert_allclose(ball.center[1], far[1], atol=TOL)
  np.testing.assert_allclose(ball.eps, 0.1, rtol=1e-6)


def _points_in_l1_ball(key, center, eps, count):
  """Uniform samples and the sparse attack's points in B1(c, ε) ∩ [0, 1]."""
  points = [
    attacks.random_start(jax.random.fold_in(key, i), center, eps, norm="l1")
    for i in range(count)
  ]
  # Vertices: all of ε on one random pixel, clipped into [0, 1].
  flat = center.reshape(center.shape[0], -1)
  for i in range(count):
    pixel = jax.random.randint(
      jax.random.fold_in(key, 1000 + i), (center.shape[0],), 0, flat.shape[1]
    )
    sign = jnp.where(i % 2, 1.0, -1.0)
    step = (
      sign * jax.nn.one_hot(pixel, flat.shape[1]) * jnp.reshape(eps, (-1, 1))
    )
    points.append(jnp.clip(flat + step, 0, 1).reshape(center.shape))
  return points


def _jitted_strongest_l1(network, steps=8):
  """The stronger l1 attack, compiled once rather than per operation."""
  return jax.jit(
    functools.partial(attacks.strongest_l1, network.logits, steps=steps)
  )


def _assert_bounds_every_point(network, robust, labels, points):
  for point in points:
    ce = cross_entropy(network.logits(point), labels)
    assert jnp.all(ce <= robust.loss + 1e-4), (ce - robust.loss).max()
    correct = jnp.argmax(network.logits(point), -1) == labels
    assert jnp.all(correct | ~robust.certified)
  # The flag is "every margin lower bound > 0", o = [0, −lb].
  np.testing.assert_array_equal(
    robust.certified, jnp.all(robust.logits[:, 1:] < 0, axis=-1)
  )


@pytest.mark.parametrize("make_network", [_mlp_network, _cnn_network])
def test_l1_crown_ibp_bounds_sampled_and_attacked_points(make_network):
  network = make_network(seed=3)
  x = _images_with_borders(8)
  labels = jnp.argmax(network.logits(x), -1)  # Some points can be certified.
  eps = jnp.array([0.005, 0.02, 0.1, 0.5, 2.0])
  # One compile each, instead of one per operation.
  robust = jax.jit(functools.partial(robust_losses.l1_crown_ibp, network))(
    x, labels, eps
  )
  attack = _jitted_strongest_l1(network)
  attacked = attack(x, labels, eps=eps, key=jax.random.key(6))
  points = _points_in_l1_ball(jax.random.key(7), x, eps, 6) + [attacked]
  _assert_bounds_every_point(network, robust, labels, points)
  assert jnp.any(robust.certified) and not jnp.all(robust.certified)


@pytest.mark.parametrize("make_network", [_mlp_network, _cnn_network])
def test_l1_certified_bounds_its_small_ball(make_network, monkeypatch):
  network = make_network(seed=4)
  x = _images_with_borders(9)
  labels = jnp.argmax(network.logits(x), -1)
  eps, lam = jnp.array([0.02, 0.1, 0.5, 2.0, 4.0]), 0.3
  attack_points = []

  def recording_attack(*args, **kwargs):
    attack_points.append(attacks.strongest_l1(*args, **kwargs))
    return attack_points[-1]

  monkeypatch.setattr(robust_losses, "strongest_l1", recording_attack)

  @jax.jit  # One compilation instead of an eager attack and bound.
  def loss_and_attack_point(x, labels, eps):
    robust = robust_losses.l1_certified(
      network, x, labels, eps, lam=lam, key=jax.random.key(8), pgd_steps=4
    )
    return robust, attack_points[-1]

  robust, attack_point = loss_and_attack_point(x, labels, eps)
  assert len(attack_points) == 1  # the loss attacked once
  ball = robust_losses.small_l1_ball(attack_point, x, eps, lam)
  attack = _jitted_strongest_l1(network)
  attacked = attack(ball.center, labels, eps=ball.eps, key=jax.random.key(9))
  points = _points_in_l1_ball(jax.random.key(10), ball.center, ball.eps, 6)
  _assert_bounds_every_point(network, robust, labels, points + [attacked])
  assert jnp.any(robust.certified) and not jnp.all(robust.certified)


@pytest.mark.parametrize("eps", [0.0, 1.0])  # The ε ramp starts at 0.
@pytest.mark.parametrize("loss", ["l1_certified", "l1_crown_ibp"])
def test_l1_losses_jit_and_have_finite_gradients(loss, eps):
  model = MLP(num_classes=4, hidden_widths=(16, 16))
  variables = model.init(
    jax.random.key(11), jnp.zeros((1, 6, 6, 1)), train=False
  )
  x, labels = _images_with_borders(12), jnp.array([0, 1, 2, 3, 0])

  def mean_loss(params, eps):
    network = Network(model.apply, {"params": params}, 4)
    if loss == "l1_crown_ibp":
      return robust_losses.l1_crown_ibp(network, x, labels, eps).loss.mean()
    return robust_losses.l1_certified(
      network, x, labels, eps, lam=0.2, key=jax.random.key(0), pgd_steps=2
    ).loss.mean()

  params = variables["params"]
  eager = mean_loss(params, eps)
  np.testing.assert_allclose(jax.jit(mean_loss)(params, eps), eager, rtol=1e-5)
  grads = jax.jit(jax.grad(mean_loss))(params, eps)
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert any(np.abs(g).max() > 0 for g in leaves)


def test_l1_crown_ibp_refuses_midpoint_moments():
  network = _mlp_network()._replace(midpoint_moments=True)
  with pytest.raises(ValueError, match="IBP only"):
    robust_losses.l1_crown_ibp(
      network, _images_with_borders(0), jnp.zeros(5, jnp.int32), 1.0
    )
