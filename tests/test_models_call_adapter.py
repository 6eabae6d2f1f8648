"""Tests for cure_jax/models/call_adapter.py: custom models in certification."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cure_jax import certify
from cure_jax.bounds import LinfBall, ibp
from cure_jax.certify import cascade, empirical
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
