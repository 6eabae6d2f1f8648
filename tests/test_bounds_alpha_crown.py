"""α-CROWN over every layer, and CROWN's unstable-only, chunked passes.

* All-layer α-CROWN is never looser than CROWN, on a small net at least as
  tight as output-only α-CROWN (strictly tighter on average), and sound —
  by sampling and attacking the sets of the soundness networks — after 0
  and 5 steps (a large learning rate), with per-row and with shared slopes.
* Early stopping returns CROWN's bound once CROWN verifies everything.
* CROWN over the unstable neurons only, and in memory-bounded chunks, gives
  the bounds of one pass over every neuron.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_bounds_soundness import (  # pylint: disable=g-bad-import-order
  NUM_CLASSES,
  _assert_within,
  _make_set,
  _network,
  _set_points,
)

from cure_jax.bounds import (
  LinfBall,
  alpha_crown,
  conv_windows,
  crown,
  layer_bounds,
  margin_spec,
)
from cure_jax.bounds import intermediate as intermediate_bounds


class DeepMlp(nn.Module):
  """Three hidden ReLU layers: two layers of intermediate bounds to optimize."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for _ in range(3):
      x = nn.relu(nn.Dense(24)(x))
    return nn.Dense(4)(x)


class SmallCnn(nn.Module):
  """Two strided convolutions and a dense layer, ReLU after each."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3), strides=2, padding="SAME")(x))
    x = nn.relu(nn.Conv(8, (3, 3), strides=2, padding="SAME")(x))
    x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
    return nn.Dense(4)(x)


@functools.cache
def _problem(name, eps=0.06):
  module = {"deep_mlp": DeepMlp(), "small_cnn": SmallCnn()}[name]
  x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1))
  variables = module.init(jax.random.key(1), x)
  labels = jnp.array([0, 1, 2])
  return module, variables, LinfBall(x, eps, domain=(0.0, 1.0)), labels


def _margins(method, name, **kwargs):
  module, variables, ball, labels = _problem(name, **kwargs)
  spec = margin_spec(labels, 4)
  return method(module.apply)(variables, ball, spec=spec).lower


def _jitted_margins(methods, name):
  """{key: `_margins`} of each of ``methods`` (a dict) under `jax.jit`: one
  compilation for all of them (XLA shares their common passes), where
  eagerly every operation compiles on its own for each pass's number of
  unstable rows. Every neuron is then a row, which changes no bound
  (all-layer α-CROWN: `test_bounds_properties.test_jit_equals_no_jit`)."""
  module, variables, ball, labels = _problem(name)

  def margins(v, b, s):
    return {
      key: method(module.apply)(v, b, spec=s).lower
      for key, method in methods.items()
    }

  return jax.jit(margins)(variables, ball, margin_spec(labels, 4))


ALL_LAYERS = functools.partial(
  alpha_crown, steps=20, early_stop=False, bound="lower"
)


@pytest.mark.parametrize("name", ["deep_mlp", "small_cnn"])
def test_all_layers_is_never_looser_than_crown_and_beats_output_only(name):
  margins = _jitted_margins(
    {
      "reference": functools.partial(crown, bound="lower"),
      "output_only": functools.partial(ALL_LAYERS, optimize="output"),
      "all_layers": ALL_LAYERS,
    },
    name,
  )
  reference, output_only = margins["reference"], margins["output_only"]
  all_layers = margins["all_layers"]
  assert np.all(all_layers >= reference - 1e-6)
  assert np.all(all_layers >= output_only - 1e-5)
  assert float(jnp.mean(all_layers - output_only)) > 1e-4
  assert float(jnp.mean(output_only - reference)) > 1e-4


def test_shared_slopes_lie_between_crown_and_per_row_slopes():
  margins = _jitted_margins(
    {
      "reference": functools.partial(crown, bound="lower"),
      "shared": functools.partial(ALL_LAYERS, share_slopes=True),
    },
    "deep_mlp",
  )
  reference, shared = margins["reference"], margins["shared"]
  assert np.all(shared >= reference - 1e-6)
  assert float(jnp.mean(shared - reference)) > 1e-4


@pytest.mark.parametrize(
  "net_name,set_name",
  [("mlp", "l1"), ("strided_cnn", "linf_clipped"), ("residual_cnn", "l2")],
)
@pytest.mark.parametrize("steps", [0, 5])
def test_all_layers_is_sound_after_every_number_of_steps(
  net_name, set_name, steps
):
  module, variables, x, labels = _network(net_name)
  spec = margin_spec(labels, NUM_CLASSES)
  points = _set_points(net_name, set_name)
  outputs = jax.vmap(functools.partial(module.apply, variables))(points)
  margins = jnp.einsum("bsk,nbk->nbs", spec, outputs)
  # A large learning rate moves the slopes far from CROWN's in a few steps.
  # After 0 steps the bound is CROWN's whether the slopes are shared or not.
  methods = {
    share: alpha_crown(
      module.apply,
      steps=steps,
      optimizer=optax.adam(0.5),
      early_stop=False,
      share_slopes=share,
    )
    for share in ((False, True) if steps else (False,))
  }
  # Jitted: one compilation for both, where eagerly every operation compiles
  # on its own.
  bounds = jax.jit(
    lambda v, s, c: {share: m(v, s, spec=c) for share, m in methods.items()}
  )(variables, _make_set(set_name, x), spec)
  for share, bounded in bounds.items():
    _assert_within(
      bounded, margins, f"{net_name} {set_name} {steps} steps, shared={share}"
    )


def test_early_stop_returns_crown_once_everything_is_verified():
  name, eps = "deep_mlp", 1e-3
  module, variables, ball, _ = _problem(name, eps)
  logits = module.apply(variables, ball.center)
  spec = margin_spec(jnp.argmax(logits, -1), 4)
  crown_lower = crown(module.apply, bound="lower")(
    variables, ball, spec=spec
  ).lower
  assert np.all(crown_lower > 0)
  method = functools.partial(alpha_crown, steps=4, bound="lower")
  stopped = method(module.apply)(variables, ball, spec=spec).lower
  ran = method(module.apply, early_stop=False)(variables, ball, spec=spec).lower
  np.testing.assert_array_equal(stopped, crown_lower)
  assert float(jnp.mean(ran - crown_lower)) > 0


@pytest.mark.parametrize("name", ["deep_mlp", "small_cnn"])
def test_unstable_only_and_chunked_crown_equal_one_full_pass(name):
  full = functools.partial(crown, only_unstable=False, pass_bytes=None)
  expected = _margins(full, name)
  unstable = _margins(functools.partial(crown, pass_bytes=None), name)
  chunked = _margins(functools.partial(crown, pass_bytes=1 << 14), name)
  both = _margins(crown, name)
  np.testing.assert_allclose(unstable, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(chunked, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(both, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["deep_mlp", "small_cnn"])
def test_a_shared_first_contraction_changes_no_bound(name, monkeypatch):
  method = functools.partial(crown, only_unstable=False, pass_bytes=None)
  shared = _margins(method, name)
  monkeypatch.setattr(
    intermediate_bounds, "leading_contraction", lambda *args: None
  )
  monkeypatch.setattr(conv_windows, "windowed_pass", lambda *args: None)
  generic = _margins(method, name)
  np.testing.assert_allclose(shared, generic, rtol=1e-5, atol=1e-5)


def test_unstable_rows_skip_stable_neurons_and_chunks_split_rows():
  module, variables, ball, _ = _problem("small_cnn")
  from cure_jax.bounds.transforms import _sets_by_id, _trace_checked

  graph, leaves = _trace_checked(module.apply, (variables, ball), {})
  sets = _sets_by_id(graph, leaves)
  _, everything = intermediate_bounds.refined_environment(
    graph, leaves, sets, only_unstable=False, pass_bytes=None
  )
  _, unstable = intermediate_bounds.refined_environment(
    graph, leaves, sets, pass_bytes=1 << 14
  )
  skipped = 0
  for atom, plan in everything.plans.items():
    fewer = unstable.plans[atom]
    assert plan.chunks == 1
    assert fewer.chunks > 1
    skipped += plan.rows_per_chunk - fewer.chunks * fewer.rows_per_chunk
    # Every neuron unstable under the refined bounds had a row.
    box = unstable.bounds[atom]
    unstable_count = jnp.sum((box.lower < 0) & (box.upper > 0))
    assert int(jnp.sum(fewer.valid)) >= int(unstable_count)
  assert skipped > 0


def test_rows_per_chunk_follows_the_budget():
  assert layer_bounds.rows_per_chunk(100, 2, 10, 4, None) == 100
  # 2 examples × 10 values × 4 bytes × 4 live copies = 320 bytes per row.
  assert layer_bounds.rows_per_chunk(100, 2, 10, 4, 3200) == 10
  assert layer_bounds.rows_per_chunk(100, 2, 10, 4, 1) == 1


def test_bad_options_are_refused():
  with pytest.raises(ValueError, match="optimize"):
    alpha_crown(jnp.tanh, optimize="every")
  with pytest.raises(ValueError, match="intermediate='crown'"):
    alpha_crown(jnp.tanh, optimize="all_layers", intermediate="ibp")
  with pytest.raises(ValueError, match="pass_bytes"):
    crown(jnp.tanh, pass_bytes=0)
