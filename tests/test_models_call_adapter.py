"""Tests for cure_jax/models/call_adapter.py: custom models in certification."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import bounds, certify
from cure_jax.bounds import LinfBall, ibp
from cure_jax.certify import (
  beyond_lp,
  cascade,
  empirical,
  region_attacks,
  regions,
)
from cure_jax.models import (
  AdaptedApply,
  BatchStatisticsError,
  ConvNet,
  accepts_train,
  adapt_apply,
)

NUM_CLASSES = 3


class Plain(nn.Module):
  """A custom classifier whose __call__ has no ``train`` argument."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1)))
    return nn.Dense(NUM_CLASSES)(x)


class WithTrain(nn.Module):
  """The same network, with the library's ``train`` argument."""

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    x = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1)))
    return nn.Dense(NUM_CLASSES)(x)


class FlaxBatchNorm(nn.Module):
  """flax.linen.BatchNorm, in batch-statistics mode when ``batch_statistics``."""

  batch_statistics: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(8)(x.reshape(x.shape[0], -1))
    x = nn.BatchNorm(momentum=0.9)(
      x, use_running_average=not (train or self.batch_statistics)
    )
    return nn.Dense(NUM_CLASSES)(nn.relu(x))


def _data(num=8):
  x = jax.random.uniform(jax.random.PRNGKey(0), (num, 2, 2, 1))
  return np.asarray(x)


def _flax_bn_variables(x):
  """FlaxBatchNorm variables with non-trivial running statistics."""
  variables = FlaxBatchNorm().init(jax.random.PRNGKey(1), x)
  stats = variables["batch_stats"]["BatchNorm_0"]
  return dict(
    variables,
    batch_stats={
      "BatchNorm_0": {
        "mean": stats["mean"] + 0.3,
        "var": stats["var"] * 0.5,
      }
    },
  )


def plain_function(variables, x):
  return x.reshape(x.shape[0], -1) @ variables["w"]


def keyword_function(variables, x, **kwargs):
  del kwargs
  return x.reshape(x.shape[0], -1) @ variables["w"]


def test_accepts_train_reads_the_signature():
  assert accepts_train(ConvNet(num_classes=2).apply)
  assert accepts_train(WithTrain())
  assert not accepts_train(Plain())
  assert not accepts_train(Plain().apply)
  assert not accepts_train(plain_function)
  assert accepts_train(keyword_function)
  assert accepts_train(adapt_apply(plain_function))


def test_adapted_functions_are_equal_for_equal_models():
  model = Plain()
  first, second = adapt_apply(model.apply), adapt_apply(model.apply)
  assert first == second and hash(first) == hash(second)
  assert adapt_apply(model) == first
  assert adapt_apply(first) is first
  assert isinstance(first, AdaptedApply) and not first.passes_train
  with pytest.raises(TypeError, match="Flax module or an apply function"):
    adapt_apply(3)


def test_train_is_dropped_for_models_without_it():
  x = _data()
  variables = Plain().init(jax.random.PRNGKey(0), x)
  adapted = adapt_apply(Plain())
  np.testing.assert_array_equal(
    adapted(variables, x, train=False), Plain().apply(variables, x)
  )


def test_a_model_without_train_certifies_like_one_with_it():
  x = _data()
  variables = Plain().init(jax.random.PRNGKey(0), x)
  labels = np.array(jnp.argmax(Plain().apply(variables, x), -1))
  labels[0] = (labels[0] + 1) % NUM_CLASSES
  results = []
  for model in (Plain(), WithTrain().apply):
    records, _ = certify.evaluate(
      model,
      variables,
      x,
      labels,
      radii={"linf": 0.05, "l2": 0.1},
      num_classes=NUM_CLASSES,
      batch_size=8,
      methods=("ibp", "crown"),
      pgd=empirical.PGDSettings(steps=3, restarts=1),
      gather=False,
      log=None,
    )
    results.append(records)
  for name, column in results[0].items():
    np.testing.assert_array_equal(column, results[1][name])
  assert results[0]["correct"].sum() == 7


def test_the_cascade_caches_its_stages_for_a_model_without_train():
  x = _data()
  variables = Plain().init(jax.random.PRNGKey(0), x)
  labels = np.zeros(len(x), np.int32)
  model = Plain()

  def certify_once():
    cascade.certify_batch(
      model.apply,
      variables,
      x,
      labels,
      norm="linf",
      eps=0.01,
      num_classes=NUM_CLASSES,
      methods=("ibp",),
      gather=False,
    )

  certify_once()
  compiled = cascade._min_margin_jit._cache_size()
  certify_once()
  assert cascade._min_margin_jit._cache_size() == compiled


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_flax_batch_norm_in_eval_mode_is_bounded_soundly(method):
  x = _data()
  variables = _flax_bn_variables(x)
  labels = np.zeros(len(x), np.int32)
  eps = 0.05
  lower = cascade.bound_margins(
    FlaxBatchNorm().apply,
    variables,
    x,
    labels,
    norm="linf",
    eps=eps,
    method=method,
    num_classes=NUM_CLASSES,
  )
  noise = jax.random.uniform(
    jax.random.PRNGKey(2), (64,) + x.shape, minval=-eps, maxval=eps
  )
  samples = jnp.clip(x + noise, 0, 1)
  for sample in samples:
    logits = FlaxBatchNorm().apply(variables, sample)
    margins = logits[:, :1] - logits[:, 1:]
    assert np.all(margins >= lower - 1e-5)


def test_flax_batch_norm_with_batch_statistics_is_refused():
  x = _data()
  variables = _flax_bn_variables(x)
  labels = np.zeros(len(x), np.int32)
  model = FlaxBatchNorm(batch_statistics=True)
  with pytest.raises(BatchStatisticsError, match="cure_jax.models.BatchNorm"):
    certify.evaluate(
      model,
      variables,
      x,
      labels,
      radii={"linf": 0.01},
      num_classes=NUM_CLASSES,
      log=None,
    )
  with pytest.raises(BatchStatisticsError, match="use_running_average=False"):
    cascade.bound_margins(
      model.apply,
      variables,
      x,
      labels,
      norm="l2",
      eps=0.1,
      method="ibp",
      num_classes=NUM_CLASSES,
    )
  # A bounded pass in train mode, outside certification, too.
  adapted = adapt_apply(FlaxBatchNorm())
  with pytest.raises(BatchStatisticsError, match="cure_jax.models.BatchNorm"):
    ibp(adapted)(variables, LinfBall(x, 0.01), train=True)
  # In evaluation mode the same model goes through.
  assert adapted(variables, x).shape == (len(x), NUM_CLASSES)


@pytest.mark.parametrize(
  "transform",
  [
    bounds.ibp,
    bounds.crown_ibp,
    bounds.crown,
    functools.partial(bounds.alpha_crown, steps=1),
  ],
)
def test_bound_transforms_refuse_flax_batch_statistics_by_name(transform):
  x = _data()
  variables = _flax_bn_variables(x)
  apply = FlaxBatchNorm().apply
  ball = LinfBall(x, 0.01)
  # Train mode, without and with the running statistics' update: never the
  # missing rule for rsqrt of the batch variance, nor the running statistics.
  for kwargs, has_aux in (
    (dict(train=True), False),
    (dict(train=True, mutable=["batch_stats"]), True),
  ):
    if has_aux and transform is not bounds.ibp:
      continue  # only IBP has has_aux
    bounded = transform(apply, has_aux=True) if has_aux else transform(apply)
    with pytest.raises(BatchStatisticsError) as error:
      bounded(variables, ball, **kwargs)
    message = str(error.value)
    for part in (
      "flax.linen.BatchNorm",
      "use_running_average=False",
      "batch statistics",
      "cure_jax.models.BatchNorm",
      "train=False",
      "use_running_average=True",
    ):
      assert part in message
  # Evaluation mode is bounded, and soundly.
  result = transform(apply)(variables, ball, train=False)
  logits = apply(variables, x, train=False)
  assert np.all(result.lower <= logits + 1e-5)
  assert np.all(logits <= result.upper + 1e-5)


def test_a_model_without_train_certifies_beyond_lp_like_one_with_it():
  x = np.asarray(jax.random.uniform(jax.random.PRNGKey(4), (6, 6, 6, 1)))
  variables = Plain().init(jax.random.PRNGKey(0), x)
  labels = np.array(jnp.argmax(Plain().apply(variables, x), -1))
  labels[0] = (labels[0] + 1) % NUM_CLASSES
  patch = beyond_lp.patch_threat(2, (6, 6), attack_steps=1)
  geometry = beyond_lp.geometric_threat(
    "brightness_contrast",
    {"brightness": 0.02, "contrast": 0.02},
    subintervals=1,
    grid_points=2,
  )
  results = []
  for model in (Plain(), WithTrain().apply):
    region_result, _ = regions.certify_regions(
      model,
      variables,
      x,
      labels,
      patch.region,
      num_classes=NUM_CLASSES,
      methods=("ibp",),
      rows_per_batch=32,
    )
    records, _ = beyond_lp.evaluate_threats(
      model,
      variables,
      x,
      labels,
      [geometry],
      num_classes=NUM_CLASSES,
      methods=("ibp",),
      log=None,
    )
    results.append((region_result, records))
  (plain_regions, plain_records), (train_regions, train_records) = results
  for plain, with_train in zip(plain_regions, train_regions):
    np.testing.assert_array_equal(plain, with_train)
  assert set(plain_records) == set(train_records)
  for name, column in plain_records.items():
    np.testing.assert_array_equal(column, train_records[name])
  assert plain_records["correct"].sum() == len(x) - 1
  certified = plain_records["certified_brightness_contrast"]
  assert 0 < certified.sum() < len(x) - 1
  # The patch attack, called directly, adapts the model too.
  robust = region_attacks.patch_attack(
    Plain(),
    variables,
    x,
    labels,
    size=2,
    positions=patch.region.regions,
    steps=1,
  )
  assert np.all(robust[plain_regions.certified]) and not robust[0]
