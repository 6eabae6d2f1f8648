"""Soundness of the bound transforms: no point of an input set leaves its bounds.

Every method (IBP, CROWN-IBP, CROWN, α-CROWN), eagerly or under jit, bounds
random Flax networks of several shapes over l∞, l2 and l1 balls, with and
without the domain clip [0, 1], with and without a margin specification.
Points of each set — random samples (corners, surface and interior points)
and the iterates of a projected-gradient attack that pushes every output and
every margin down and up — must stay inside the bounds up to float32
round-off.

The attack is self-contained (it does not use `cure_jax.attacks`), so a bug
shared by the bounds and the attacks cannot hide itself; a first test checks
that it reaches the exact optimum of a linear function over each set.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax.bounds import (
  L1Ball,
  L2Ball,
  LinfBall,
  alpha_crown,
  crown,
  crown_ibp,
  ibp,
  margin_spec,
)

NUM_CLASSES = 4
BATCH = 2
DOMAIN = (0.0, 1.0)
NUM_SAMPLES = 192
ATTACK_STEPS = 40
# float32 round-off allowance, relative to the size of the bounded values.
RTOL = 1e-4

METHODS = {
  "ibp": ibp,
  "crown_ibp": crown_ibp,
  "crown": crown,
  # Any slopes in [0, 1] are sound; a few steps exercise the optimizer.
  "alpha_crown": functools.partial(alpha_crown, steps=4),
}


# ----------------------------------------------------------------- networks


class Mlp(nn.Module):
  """Flatten, two hidden ReLU layers."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(16)(x))
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(NUM_CLASSES)(x)


class StridedCnn(nn.Module):
  """SAME, explicit asymmetric and VALID padding, stride 2."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
    x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding=((1, 2), (0, 1)))(x))
    x = nn.relu(nn.Conv(4, (2, 2), padding="VALID")(x))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


class GroupedDilatedCnn(nn.Module):
  """A grouped first convolution, then a dilated one."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), padding=1, feature_group_count=2)(x))
    x = nn.relu(nn.Conv(4, (3, 3), padding="SAME", kernel_dilation=2)(x))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


class BatchNormCnn(nn.Module):
  """Conv-BatchNorm-ReLU twice, BatchNorm in inference mode."""

  @nn.compact
  def __call__(self, x):
    for _ in range(2):
      x = nn.Conv(4, (3, 3), strides=2, padding="SAME")(x)
      x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


class PoolingCnn(nn.Module):
  """Average pooling, then overlapping padded max pooling."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


class ResidualCnn(nn.Module):
  """x + conv(relu(conv(x))) between two ReLU layers."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))
    branch = nn.Conv(4, (3, 3), padding="SAME")(x)
    x = nn.relu(x + nn.Conv(4, (3, 3), padding="SAME")(nn.relu(branch)))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


class NormalizedCnn(nn.Module):
  """(x - mean) / std with per-channel statistics, then a CNN."""

  mean: tuple = (0.2, 0.5, 0.7)
  std: tuple = (0.3, 0.1, 0.25)

  @nn.compact
  def __call__(self, x):
    x = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


class SmoothMlp(nn.Module):
  """S-shaped activations: tanh, sigmoid, erf, asinh."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for activation in (
      jnp.tanh,
      nn.sigmoid,
      jax.scipy.special.erf,
      jnp.arcsinh,
    ):
      x = activation(nn.Dense(8)(x))
    return nn.Dense(NUM_CLASSES)(x)


class ConvexConcaveCnn(nn.Module):
  """Convex, concave and reverse-S activations, some at the edge of their
  domain (log1p and sqrt after a ReLU), then cbrt (infinite slope at 0)."""

  @nn.compact
  def __call__(self, x):
    x = jnp.log1p(nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x)))
    x = jnp.exp(0.5 * nn.Conv(4, (3, 3), padding="SAME")(x))
    x = jnp.sqrt(nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1))))
    x = jnp.cbrt(jnp.sinh(nn.Dense(8)(x)))
    return nn.Dense(NUM_CLASSES)(x)


class ClipStackMlp(nn.Module):
  """min with a constant (relu6, clip: hard tanh) and a stack of branches."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(8)(x.reshape(x.shape[0], -1))
    x = jnp.stack([jax.nn.relu6(3.0 * x), jnp.clip(x, -0.5, 0.5)], axis=-1)
    x = jnp.clip(nn.Dense(8)(x.reshape(x.shape[0], -1)), -1.0, 1.0)
    return nn.Dense(NUM_CLASSES)(x)


class PiecewiseCnn(nn.Module):
  """Comparisons and selects: leaky ReLU, ELU, a thresholded jnp.where."""

  @nn.compact
  def __call__(self, x):
    x = jax.nn.leaky_relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x), 0.1)
    x = jax.nn.elu(nn.Conv(4, (3, 3), padding="SAME")(x))
    x = nn.Dense(8)(x.reshape(x.shape[0], -1))
    x = jnp.where(x > 0.2, x, 0.5 * x - 0.1)
    return nn.Dense(NUM_CLASSES)(x)


class GatedCnn(nn.Module):
  """Products of bounded values: SiLU, GELU (tanh form: x³), a gate
  h·sigmoid(g), and a square."""

  @nn.compact
  def __call__(self, x):
    x = jax.nn.silu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))
    x = nn.gelu(nn.Conv(4, (3, 3), padding="SAME")(x), approximate=True)
    x = x.reshape(x.shape[0], -1)
    h = nn.Dense(8)(x)
    x = h * nn.sigmoid(nn.Dense(8)(x)) - 0.2 * jnp.square(nn.Dense(8)(x))
    return nn.Dense(NUM_CLASSES)(x)


NETWORKS = {
  "mlp": (Mlp(), (8, 8, 1)),
  "strided_cnn": (StridedCnn(), (8, 8, 2)),
  "grouped_dilated_cnn": (GroupedDilatedCnn(), (8, 8, 2)),
  "batch_norm_cnn": (BatchNormCnn(), (8, 8, 2)),
  "pooling_cnn": (PoolingCnn(), (8, 8, 2)),
  "residual_cnn": (ResidualCnn(), (8, 8, 2)),
  "normalized_cnn": (NormalizedCnn(), (8, 8, 3)),
  "smooth_mlp": (SmoothMlp(), (8, 8, 1)),
  "convex_concave_cnn": (ConvexConcaveCnn(), (8, 8, 2)),
  "clip_stack_mlp": (ClipStackMlp(), (8, 8, 1)),
  "piecewise_cnn": (PiecewiseCnn(), (8, 8, 2)),
  "gated_cnn": (GatedCnn(), (8, 8, 2)),
}


def _random_batch_stats(variables, key):
  """Non-trivial running statistics and affine parameters for BatchNorm."""
  if "batch_stats" not in variables:
    return variables
  params, stats = dict(variables["params"]), dict(variables["batch_stats"])
  for name in stats:
    k1, k2, k3, k4, key = jax.random.split(key, 5)
    shape = stats[name]["mean"].shape
    stats[name] = {
      "mean": 0.3 * jax.random.normal(k1, shape),
      "var": jax.random.uniform(k2, shape, minval=0.2, maxval=2.0),
    }
    params[name] = {
      "scale": jax.random.uniform(k3, shape, minval=0.5, maxval=1.5),
      "bias": 0.2 * jax.random.normal(k4, shape),
    }
  return {"params": params, "batch_stats": stats}


@functools.cache
def _network(name):
  """(module, variables, centers x in [0, 1] with saturated pixels, labels)."""
  module, image_shape = NETWORKS[name]
  k_init, k_x, k_snap, k_stats, k_labels = jax.random.split(
    jax.random.key(len(name)), 5
  )
  x = jax.random.uniform(k_x, (BATCH,) + image_shape)
  # A quarter of the pixels at 0 or 1, so that the domain clip is active.
  snap = jax.random.uniform(k_snap, x.shape)
  x = jnp.where(snap < 0.125, 0.0, jnp.where(snap > 0.875, 1.0, x))
  variables = jax.jit(module.init)(k_init, x)  # one compilation, not many
  variables = _random_batch_stats(variables, k_stats)
  labels = jax.random.randint(k_labels, (BATCH,), 0, NUM_CLASSES)
  return module, variables, x, labels


# --------------------------------------------------------------------- sets


def _radius(set_name, x):
  """Radii of several shapes: scalar, per example [B], per element."""
  p, clipped = SETS[set_name]
  if p == math.inf:
    if clipped:  # per element
      return jax.random.uniform(
        jax.random.key(1), x.shape, minval=0.01, maxval=0.05
      )
    return 0.03
  scale = 0.5 if p == 2 else 1.5
  if clipped:  # per example
    return scale * jnp.linspace(0.6, 1.0, x.shape[0])
  return scale


SETS = {  # name: (p, intersected with the domain [0, 1])
  "linf": (math.inf, False),
  "linf_clipped": (math.inf, True),
  "l2": (2.0, False),
  "l2_clipped": (2.0, True),
  "l1": (1.0, False),
  "l1_clipped": (1.0, True),
}
_BALLS = {math.inf: LinfBall, 2.0: L2Ball, 1.0: L1Ball}


def _make_set(set_name, x):
  p, clipped = SETS[set_name]
  return _BALLS[p](x, _radius(set_name, x), domain=DOMAIN if clipped else None)


def _per_example(eps, x):
  """A radius broadcast against x: [B, 1, ...] or x's shape."""
  eps = jnp.asarray(eps, x.dtype)
  if eps.ndim == x.ndim:
    return eps
  return jnp.broadcast_to(eps, x.shape[:1]).reshape((-1,) + (1,) * (x.ndim - 1))


def _flat_norm(delta, p):
  flat = delta.reshape(delta.shape[0], -1)
  if p == math.inf:
    return jnp.max(jnp.abs(flat), -1)
  return jnp.sum(jnp.abs(flat) ** p, -1) ** (1 / p)


def _project_l1(delta, eps):
  """Exact Euclidean projection of each row onto the l1 ball.

  Duchi et al., "Efficient projections onto the l1-ball" (ICML 2008):
  soft-threshold at θ, the largest of (Σ_{j<=k} μ_j - eps) / k over the
  sorted magnitudes μ that keeps μ_k above it.
  """
  flat = delta.reshape(delta.shape[0], -1)
  eps = eps.reshape(-1, 1)
  magnitude = jnp.abs(flat)
  mu = -jnp.sort(-magnitude, axis=-1)
  k = jnp.arange(1, flat.shape[1] + 1, dtype=flat.dtype)
  cumulative = jnp.cumsum(mu, axis=-1)
  count = jnp.sum(mu * k > cumulative - eps, axis=-1, keepdims=True)
  theta = (jnp.take_along_axis(cumulative, count - 1, axis=-1) - eps) / count
  projected = jnp.sign(flat) * jnp.maximum(magnitude - theta, 0.0)
  inside = jnp.sum(magnitude, axis=-1, keepdims=True) <= eps
  return jnp.where(inside, flat, projected).reshape(delta.shape)


def _project(delta, eps, p):
  """Projects per-example perturbations onto the l_p ball of radius eps."""
  if p == math.inf:
    return jnp.clip(delta, -eps, eps)
  per_example = eps.reshape(-1)
  if p == 2:
    norm = _flat_norm(delta, 2)
    factor = jnp.minimum(1.0, per_example / jnp.maximum(norm, 1e-12))
    return delta * factor.reshape((-1,) + (1,) * (delta.ndim - 1))
  return _project_l1(delta, per_example)


def _into_set(center, delta, eps, p, domain):
  """center + Π(delta), then clipped to the domain.

  Clipping into a box that contains the center moves every coordinate
  towards the center, so the point stays in the ball: the result lies in
  ball ∩ domain.
  """
  x = center + _project(delta, eps, p)
  return x if domain is None else jnp.clip(x, *domain)


def _assert_in_set(points, center, eps, p, domain):
  """The test's own points really are in ball ∩ domain."""
  delta = (points - center).reshape((-1,) + center.shape)
  if p == math.inf:
    excess = jnp.max(jnp.abs(delta) - eps)
  else:
    norms = jax.vmap(lambda d: _flat_norm(d, p))(delta)
    excess = jnp.max(norms - eps.reshape(-1))
  assert excess <= 1e-5, f"a test point is outside the l{p} ball by {excess}"
  if domain is not None:
    assert jnp.all((points >= domain[0]) & (points <= domain[1]))


def _sample(key, center, eps, p, domain, n):
  """[n, B, ...] points of the set: corners/vertices, surface and interior."""
  shape = (n,) + center.shape
  k_dir, k_radius, k_vertex, k_sign = jax.random.split(key, 4)
  if p == math.inf:  # half corners, half uniform in the box
    corners = eps * jnp.sign(jax.random.normal(k_dir, shape))
    uniform = jax.random.uniform(k_radius, shape, minval=-1.0) * eps
    delta = jnp.where(
      jnp.arange(n).reshape((n,) + (1,) * center.ndim) % 2 == 0,
      corners,
      uniform,
    )
  else:
    if p == 2:
      direction = jax.random.normal(k_dir, shape)
    else:  # Laplace directions, and every third sample a vertex ±eps·e_i
      direction = jax.random.laplace(k_dir, shape)
      vertex = jax.nn.one_hot(
        jax.random.randint(k_vertex, shape[:2], 0, math.prod(center.shape[1:])),
        math.prod(center.shape[1:]),
      ).reshape(shape)
      vertex = vertex * jnp.sign(jax.random.normal(k_sign, shape))
      is_vertex = (jnp.arange(n) % 3 == 0).reshape((n,) + (1,) * center.ndim)
      direction = jnp.where(is_vertex, vertex, direction)
    norms = jax.vmap(lambda d: _flat_norm(d, p))(direction)
    direction = direction / norms.reshape(
      norms.shape + (1,) * (center.ndim - 1)
    )
    # Half on the surface, half inside.
    radius = jnp.where(
      jnp.arange(n) % 2 == 0, 1.0, jax.random.uniform(k_radius, (n,))
    )
    delta = direction * radius.reshape((n,) + (1,) * center.ndim) * eps
  return jax.vmap(lambda d: _into_set(center, d, eps, p, domain))(delta)


# ------------------------------------------------------------------- attack


def _descent_direction(grad, p):
  """The steepest ascent direction of unit l_p norm (sparse for l1)."""
  if p == math.inf:
    return jnp.sign(grad)
  flat = grad.reshape(grad.shape[0], -1)
  if p == 2:
    return grad / jnp.maximum(_flat_norm(grad, 2), 1e-12).reshape(
      (-1,) + (1,) * (grad.ndim - 1)
    )
  # l1: move the coordinate of largest gradient magnitude (a vertex direction).
  top = jnp.argmax(jnp.abs(flat), axis=-1)
  sparse = jax.nn.one_hot(top, flat.shape[1], dtype=flat.dtype) * jnp.sign(flat)
  return sparse.reshape(grad.shape)


@functools.cache
def _objective_gradient(apply_fn):
  """Jitted (x [N, ...], d [N, K]) -> (<d_n, f(x_n)> [N], its gradient in x).

  One compilation per network: the attack loop itself runs eagerly, so its
  few elementwise operations are compiled once for all networks and sets.
  """

  def objective(x, directions):
    per_point = jnp.sum(apply_fn(x) * directions, -1)
    return per_point.sum(), per_point

  gradient = jax.jit(jax.value_and_grad(objective, has_aux=True))

  def value_and_gradient(x, directions):
    (_, value), grad = gradient(x, directions)
    return value, grad

  return value_and_gradient


def _attack(
  apply_fn, center, eps, directions, key, p, domain, steps=ATTACK_STEPS
):
  """Projected gradient descent of <d_r, f(x_r)> over x_r in the set.

  Args:
    apply_fn: x [N, ...] -> outputs [N, K] (hashable: its gradient is cached).
    center: [B, ...] centers.
    eps: radius broadcast against ``center``.
    directions: [R, B, K] objectives, one attack per row and example.
    key: PRNG key of the random start.
    p: the norm; domain: None or (lo, hi).
    steps: iterations; the step size decays geometrically from eps/2 to
      eps/100.

  Returns:
    [R, B, ...] the best iterate of each attack (lowest objective).
  """
  rows = directions.shape[0]
  flat_center = jnp.broadcast_to(center, (rows,) + center.shape).reshape(
    (-1,) + center.shape[1:]
  )
  flat_eps = jnp.broadcast_to(eps, (rows,) + eps.shape).reshape(
    (-1,) + eps.shape[1:]
  )
  flat_directions = directions.reshape(-1, directions.shape[-1])
  value_and_gradient = _objective_gradient(apply_fn)
  # Random start half-way to a random point of the set.
  start = _sample(key, flat_center, flat_eps, p, domain, 1)[0]
  x = 0.5 * (start + flat_center)
  best_x, best_value = x, jnp.full(flat_center.shape[:1], jnp.inf)
  per_point = (-1,) + (1,) * (center.ndim - 1)
  for i in range(steps + 1):
    value, grad = value_and_gradient(x, flat_directions)
    better = value < best_value
    best_x = jnp.where(better.reshape(per_point), x, best_x)
    best_value = jnp.where(better, value, best_value)
    size = flat_eps * (0.5 * 0.02 ** (i / steps))
    x = _into_set(
      flat_center,
      x - flat_center - size * _descent_direction(grad, p),
      flat_eps,
      p,
      domain,
    )
  return best_x.reshape((rows,) + center.shape)


def _attack_directions(spec, num_classes):
  """[R, B, K]: ±e_k for every output, ±C_s for every specification row."""
  batch = spec.shape[0]
  eye = jnp.broadcast_to(
    jnp.eye(num_classes)[:, None], (num_classes, batch, num_classes)
  )
  rows = jnp.swapaxes(spec, 0, 1)
  return jnp.concatenate([eye, -eye, rows, -rows], axis=0)


# ---------------------------------------------------------------- assertions


def _assert_within(bounds, values, what):
  """values [N, *bounds.shape] lie in bounds, up to float32 round-off."""
  lower, upper = np.asarray(bounds.lower), np.asarray(bounds.upper)
  values = np.asarray(values)
  assert np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)), what
  scale = 1.0 + np.maximum(np.abs(lower), np.abs(upper))
  below = np.max((lower - values) / scale)
  above = np.max((values - upper) / scale)
  assert below <= RTOL and above <= RTOL, (
    f"{what}: a point of the set leaves its bounds (relative excess: "
    f"{below:.2e} below the lower bound, {above:.2e} above the upper)."
  )


# -------------------------------------------------------------------- tests


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_attack_reaches_the_minimum_of_a_linear_function(p):
  """The helper attack is strong: it attains min <w, x> over the ball."""
  center = jax.random.uniform(jax.random.key(0), (BATCH, 6, 6, 1))
  weight = jax.random.normal(jax.random.key(1), (36, NUM_CLASSES))
  apply_fn = _LinearModel(weight)
  eps = _per_example(jnp.asarray(0.3), center)
  directions = _attack_directions(
    margin_spec(jnp.arange(BATCH), NUM_CLASSES), NUM_CLASSES
  )
  points = _attack(
    apply_fn, center, eps, directions, jax.random.key(2), p, None, steps=60
  )
  _assert_in_set(points, center, eps, p, None)
  achieved = jnp.sum(jax.vmap(apply_fn)(points) * directions, -1)
  # min over the ball of <d, W x> = <d, W c> - eps ||W d||_q.
  w_d = jnp.einsum("ik,rbk->rbi", weight, directions)
  q = {math.inf: 1, 2.0: 2, 1.0: math.inf}[p]
  dual = jnp.linalg.norm(w_d, ord=q, axis=-1)
  optimum = jnp.sum(apply_fn(center) * directions, -1) - 0.3 * dual
  np.testing.assert_allclose(
    achieved, optimum, atol=2e-3 * (1 + jnp.max(jnp.abs(optimum)))
  )


class _LinearModel:
  """x -> flatten(x) @ W, hashable by identity (a static jit argument)."""

  def __init__(self, weight):
    self.weight = weight

  def __call__(self, x):
    return x.reshape(x.shape[0], -1) @ self.weight


class _BoundModel:
  """``module.apply(variables, x)`` as a hashable callable for `_attack`."""

  def __init__(self, module, variables):
    self.module, self.variables = module, variables

  def __call__(self, x):
    return self.module.apply(self.variables, x)


@functools.cache
def _bound_model(net_name):
  module, variables, _, _ = _network(net_name)
  return _BoundModel(module, variables)


def _set_points(net_name, set_name):
  """[N, B, ...] samples and attack iterates of the set, checked to be in it."""
  _, _, x, labels = _network(net_name)
  p, clipped = SETS[set_name]
  domain = DOMAIN if clipped else None
  eps = _per_example(_radius(set_name, x), x)
  samples = _sample(jax.random.key(3), x, eps, p, domain, NUM_SAMPLES)
  directions = _attack_directions(margin_spec(labels, NUM_CLASSES), NUM_CLASSES)
  attacked = _attack(
    _bound_model(net_name), x, eps, directions, jax.random.key(4), p, domain
  )
  points = jnp.concatenate([samples, attacked], axis=0)
  _assert_in_set(points, x, eps, p, domain)
  return points


# Three sets on the MLP and the other three on the strided CNN, two sets on
# most other networks: together every set meets at least two CNNs, and every
# network but the two slowest to bound (the convex-concave and the product
# networks, one set each) a clipped and an unclipped set. Every method bounds
# the margins everywhere; the outputs themselves (no spec: the identity's
# rows, a path all networks share) IBP everywhere, CROWN-IBP and CROWN on the
# MLP and the strided CNN, α-CROWN on the MLP.
SOUNDNESS_CASES = [
  ("mlp", "linf"),
  ("mlp", "l2_clipped"),
  ("mlp", "l1"),
  ("strided_cnn", "linf_clipped"),
  ("strided_cnn", "l2"),
  ("strided_cnn", "l1_clipped"),
  ("grouped_dilated_cnn", "linf_clipped"),
  ("grouped_dilated_cnn", "l1"),
  ("batch_norm_cnn", "l2_clipped"),
  ("batch_norm_cnn", "linf"),
  ("pooling_cnn", "linf_clipped"),
  ("pooling_cnn", "l2"),
  ("residual_cnn", "l1_clipped"),
  ("residual_cnn", "linf_clipped"),
  ("normalized_cnn", "l2_clipped"),
  ("normalized_cnn", "l1"),
  ("smooth_mlp", "linf_clipped"),
  ("smooth_mlp", "l2"),
  ("convex_concave_cnn", "linf"),
  ("clip_stack_mlp", "linf_clipped"),
  ("clip_stack_mlp", "l2"),
  ("piecewise_cnn", "linf"),
  ("piecewise_cnn", "l1_clipped"),
  ("gated_cnn", "linf_clipped"),
]


def _bounds_the_outputs(method_name, net_name):
  """Whether the case also bounds the outputs themselves (no spec)."""
  if method_name == "ibp":
    return True
  if method_name == "alpha_crown":
    return net_name == "mlp"
  return net_name in ("mlp", "strided_cnn")


# Bounds of most networks are computed under jit, every method's in one
# compilation (XLA shares the passes the methods have in common); these
# networks' eagerly, one operation at a time (intermediate passes then take
# the unstable neurons' rows only), so both paths are checked for soundness.
EAGER_NETWORKS = frozenset({"smooth_mlp", "piecewise_cnn", "gated_cnn"})


def _every_methods_bounds(module, net_name):
  """(variables, set, spec) -> {(method, with the spec): bounds}, jitted
  unless the network is one of EAGER_NETWORKS."""

  def bounds(variables, input_set, spec):
    out = {}
    for method_name, method in METHODS.items():
      bounded = method(module.apply)
      out[method_name, True] = bounded(variables, input_set, spec=spec)
      if _bounds_the_outputs(method_name, net_name):
        out[method_name, False] = bounded(variables, input_set, spec=None)
    return out

  return bounds if net_name in EAGER_NETWORKS else jax.jit(bounds)


@pytest.mark.parametrize("net_name,set_name", SOUNDNESS_CASES)
def test_points_of_the_set_stay_within_every_methods_bounds(net_name, set_name):
  module, variables, x, labels = _network(net_name)
  input_set = _make_set(set_name, x)
  spec = margin_spec(labels, NUM_CLASSES)
  points = _set_points(net_name, set_name)
  outputs = jax.vmap(functools.partial(module.apply, variables))(points)
  margins = jnp.einsum("bsk,nbk->nbs", spec, outputs)
  bounds = _every_methods_bounds(module, net_name)(variables, input_set, spec)
  for (method_name, with_spec), bounded in bounds.items():
    what = f"{method_name} on {net_name} over {set_name}"
    if with_spec:
      _assert_within(bounded, margins, what + " with a margin spec")
    else:
      _assert_within(bounded, outputs, what)
