"""Bound transforms in the style of `jax.grad`.

Each transform takes a function and returns one that accepts input sets
(`LinfBall`, `L2Ball`, `L1Ball`, `LpBall`, `Box`) where the original took
arrays — other arguments stay concrete — and returns `Interval` bounds with
the structure of the function's output::

  bounds = ibp(model.apply)(variables, LinfBall(x, 0.1, domain=(0., 1.)))

With ``spec=C`` (per example, [B, S, K]; see `margin_spec`) the transformed
function bounds C·f(x) ([B, S]) and folds C into the last affine operations
instead of bounding f and multiplying afterwards (docs/method.md §2), which is tighter.

A `flax.linen.BatchNorm` with batch statistics (``use_running_average``
False) is refused with a `BatchStatisticsError` (`batch_statistics`): its
output for one example depends on the rest of the batch.

Methods (all pure; compose with `jit`, `vmap` and `grad`):

* `ibp`        interval bound propagation (exact l_p first layer);
* `crown_ibp`  IBP for intermediate bounds, one CROWN pass from the output;
* `crown`      CROWN for every intermediate bound (a backward pass per
               hidden layer from its unstable neurons, in memory-bounded
               chunks: `intermediate`, `layer_bounds`);
* `alpha_crown` CROWN with lower slopes of ReLU-like units (and the planes
               of products) optimized by gradient ascent (optax) for every
               backward pass — the output's and each hidden layer's — or
               for the output's only (`slope_optimization`).
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cure_jax.bounds import (
  backward,
  example_groups,
  ibp_rules,
  layer_bounds,
  leaky_relu,
  linear_rules,
  slope_optimization,
)
from cure_jax.bounds import intermediate as intermediate_bounds
from cure_jax.bounds.batch_statistics import refuse_batch_statistics
from cure_jax.bounds.forward import (
  Env,
  as_interval,
  is_bounded,
  propagate,
  read,
)
from cure_jax.bounds.graph import Const, Eqn, Graph, trace
from cure_jax.bounds.interval import Interval
from cure_jax.bounds.sets import is_input_set


def _trace_checked(fn, args, kwargs):
  """``fn``'s graph and argument leaves, at least one an input set.

  Raises:
    ValueError: no input set, or tracing failed (a shape mismatch, most
      likely).
    BatchStatisticsError: ``fn`` calls a flax.linen.BatchNorm with batch
      statistics (`batch_statistics`).
  """
  leaves = jax.tree_util.tree_leaves(args, is_leaf=is_input_set)
  sets = [leaf for leaf in leaves if is_input_set(leaf)]
  if not sets:
    raise ValueError(
      "no input set among the arguments: pass e.g. "
      "LinfBall(x, eps) in place of the array x."
    )
  try:
    with refuse_batch_statistics():  # a clear error, not "no rule for rsqrt"
      graph, leaves = trace(fn, args, kwargs)
  except (TypeError, ValueError) as error:
    shapes = ", ".join(f"{type(s).__name__}{tuple(s.shape)}" for s in sets)
    raise ValueError(
      f"tracing {getattr(fn, '__name__', fn)} with input sets of shape "
      f"{shapes} failed: does each set have the shape (batch first) of the "
      f"argument it replaces? Original error: {error}"
    ) from error
  return leaky_relu.fuse(graph), leaves


def _sets_by_id(graph: Graph, leaves) -> dict[int, Any]:
  return {
    v: leaf for v, leaf in zip(graph.inputs, leaves) if is_input_set(leaf)
  }


def _single_output(graph: Graph, env: Env, what: str):
  if len(graph.outputs) != 1:
    raise ValueError(
      f"{what} needs a function with a single array output; "
      f"this one has {len(graph.outputs)}."
    )
  out = graph.outputs[0]
  if isinstance(out, Const) or not is_bounded(env[out]):
    raise ValueError("the output does not depend on any input set.")
  return out


def _check_spec(spec, out_shape):
  spec = jnp.asarray(spec)
  if (
    spec.ndim != 3
    or spec.shape[0] != out_shape[0]
    or spec.shape[2] != out_shape[-1]
    or len(out_shape) != 2
  ):
    raise ValueError(
      f"spec must have shape [B, S, K] for an output of shape [B, K]; got "
      f"spec {spec.shape} for output {tuple(out_shape)}."
    )
  return spec


def _output_intervals(graph: Graph, env: Env):
  values = [as_interval(read(env, atom)) for atom in graph.outputs]
  return jax.tree_util.tree_unflatten(graph.out_tree, values)


def _bounded_in(env: Env) -> Callable[[Any], bool]:
  """Whether an atom holds a bound in ``env``."""
  return lambda a: not isinstance(a, Const) and a in env and is_bounded(env[a])


def _stop_at_nonaffine(env: Env) -> Callable[[Eqn], bool]:
  """Stops IBP's specification pass at the first equation that is not affine."""
  bounded = _bounded_in(env)
  return lambda eqn: (
    eqn.name not in linear_rules.AFFINE_PRIMITIVES
    or linear_rules.is_product(eqn, bounded)
  )


def _start(graph: Graph, env: Env, spec, what: str, both: bool = True):
  """Initial coefficients and how to read the result back.

  [C; -C] with a spec, else [I; -I] over the output's elements; only the
  first half when ``both`` is False (lower bounds only).

  Returns:
    (output id, coefficients, finish: lower rows -> Interval).
  """
  out = _single_output(graph, env, what)
  shape = as_interval(env[out]).shape
  dtype = as_interval(env[out]).lower.dtype  # float64 functions stay float64
  if spec is None:
    coeffs = backward.identity_coefficients(shape, dtype, both)
    return (
      out,
      coeffs,
      lambda lower: backward.interval_from_identity(lower, shape, both),
    )
  spec = _check_spec(spec, shape)
  coeffs = backward.spec_coefficients(spec.astype(dtype), both)
  return out, coeffs, lambda lower: backward.interval_from_spec(lower, both)


def _check_bound(bound: str) -> bool:
  """``both`` for bound="both", False for "lower" (upper bounds left +inf)."""
  if bound not in ("both", "lower"):
    raise ValueError(f"bound must be 'both' or 'lower', got {bound!r}.")
  return bound == "both"


def _split_aux(graph: Graph, env: Env):
  """(the graph of ``fn``'s first output, its second output's values).

  For ``has_aux``: ``fn`` returns ``(output, aux)``; aux leaves are returned as
  they are in ``env`` — arrays where they do not depend on an input set (or
  come through `midpoint`), `Interval`s where they do.
  """
  children = graph.out_tree.children()
  if graph.out_tree.num_nodes == 1 or len(children) != 2:
    raise ValueError(
      "has_aux=True needs a function returning a pair (output, aux)."
    )
  main, aux_tree = children
  n = main.num_leaves
  aux = [read(env, atom) for atom in graph.outputs[n:]]
  aux = [as_interval(a) if is_bounded(a) else a for a in aux]
  return (
    graph._replace(outputs=graph.outputs[:n], out_tree=main),
    jax.tree_util.tree_unflatten(aux_tree, aux),
  )


def ibp(
  fn: Callable, return_preactivations: bool = False, has_aux: bool = False
) -> Callable:
  """Interval bound propagation of ``fn`` (Gowal et al., 2018).

  Center/radius form for affine operations; an l_p ball is bounded exactly
  through its first affine operation by the dual norm (`first_layer`).

  Args:
    fn: any JAX function whose arguments include arrays to be replaced by
      input sets.
    return_preactivations: also return the list of the `Interval`s entering
      each ReLU (``max`` with a constant), in execution order — what Shi et
      al.'s warm-up regularizers need.
    has_aux: like `jax.grad`'s: ``fn`` returns ``(output, aux)``; only the
      output is bounded, and ``aux`` comes back as computed — arrays where it
      does not depend on an input set or comes through `midpoint` (e.g. a
      train-mode Flax ``apply`` with ``mutable=['batch_stats']`` returns the
      running statistics updated with the moments of the bounds' centres),
      `Interval`s elsewhere.

  Returns:
    ``bounded(*args, spec=None, **kwargs)`` returning `Interval`s with the
    structure of ``fn``'s output, or [B, S] bounds of ``spec @ fn(...)``
    (and the pre-activation intervals when asked for).
  """

  @functools.wraps(fn)
  def bounded(*args, spec=None, **kwargs):
    graph, leaves = _trace_checked(fn, args, kwargs)
    env = propagate(graph, leaves, ibp_rules.RULES, "IBP")
    if has_aux:
      graph, aux = _split_aux(graph, env)
    if spec is None:
      result = _output_intervals(graph, env)
    else:
      out, start, finish = _start(graph, env, spec, "ibp with a spec")
      result = finish(
        backward.lower_bound(
          graph,
          env,
          _sets_by_id(graph, leaves),
          {out: start},
          linear_rules.RULES,
          stop=_stop_at_nonaffine(env),
        )
      )
    if return_preactivations:
      result = result, list(_unstable_relus(graph, env).values())
    return (result, aux) if has_aux else result

  return bounded


AUTO = "auto"


def _check_rows_per_pass(rows_per_pass):
  if (
    rows_per_pass is None
    or rows_per_pass == AUTO
    or (isinstance(rows_per_pass, int) and rows_per_pass > 0)
  ):
    return rows_per_pass
  raise ValueError(
    f"rows_per_pass must be 'auto', None or a positive int, "
    f"got {rows_per_pass!r}."
  )


def _row_groups(start: jax.Array, rows_per_pass, env: Env):
  """The output pass's rows in cache-sized groups (`backward.row_groups`).

  ``rows_per_pass``: "auto" (`backward.default_rows_per_pass`, given the
  widest bounded value of ``env``), None (one pass) or rows·examples per
  pass. At most 20 groups (a pass over both sides of 10 logits): each is a
  separately compiled pass.
  """
  if rows_per_pass == AUTO:
    row_bytes = intermediate_bounds.largest_value(env) * start.dtype.itemsize
    rows_per_pass = backward.default_rows_per_pass(row_bytes)
  if rows_per_pass is None:
    return None
  return backward.row_groups(
    start.shape[0], start.shape[1], rows_per_pass, max_groups=20
  )


def _crown_ibp_lower(graph, env, leaves, spec, both, rows_per_pass=AUTO):
  """max(CROWN-IBP, IBP) lower bounds on an IBP environment, and ``finish``.

  A single CROWN pass can be looser than IBP (Zhang et al., 2020, observe
  this early in training); both are sound, so the elementwise larger one is.
  """
  out, start, finish = _start(graph, env, spec, "crown_ibp", both)
  sets = _sets_by_id(graph, leaves)
  linear = backward.lower_bound(
    graph,
    env,
    sets,
    {out: start},
    linear_rules.RULES,
    groups=_row_groups(start, rows_per_pass, env),
  )
  interval = backward.lower_bound(
    graph,
    env,
    sets,
    {out: start},
    linear_rules.RULES,
    stop=_stop_at_nonaffine(env),
  )
  return jnp.maximum(linear, interval), finish


_ROWS_PER_PASS_DOC = """rows_per_pass: the output's backward pass takes the specification
      rows in groups of about this many rows·examples, one pass per group
      (same bounds, ~25% faster on a CPU for CNN7 at batch 128: the
      coefficients stay near the cache); "auto" (default) is 128 on a CPU,
      more where rows are narrow (`backward.default_rows_per_pass`), and
      one pass elsewhere; None always one pass."""


def crown_ibp(
  fn: Callable, bound: str = "both", rows_per_pass=AUTO
) -> Callable:
  """CROWN-IBP (Zhang et al., ICLR 2020): IBP intermediates, CROWN output.

  Args:
    fn: the function to bound.
    bound: "both", or "lower" to skip the upper bounds (returned as +inf):
      half the cost, and all that margins need for training or certifying.
    {rows_per_pass}

  Returns:
    ``bounded(*args, spec=None, **kwargs)``; without a spec the output must
    be a single array and every element is bounded.
  """
  both = _check_bound(bound)
  rows_per_pass = _check_rows_per_pass(rows_per_pass)

  @functools.wraps(fn)
  def bounded(*args, spec=None, **kwargs):
    graph, leaves = _trace_checked(fn, args, kwargs)
    env = propagate(graph, leaves, ibp_rules.RULES, "CROWN-IBP")
    lower, finish = _crown_ibp_lower(
      graph, env, leaves, spec, both, rows_per_pass
    )
    return finish(lower)

  return bounded


crown_ibp.__doc__ = crown_ibp.__doc__.format(rows_per_pass=_ROWS_PER_PASS_DOC)


def _crown_lower(
  graph,
  leaves,
  spec,
  both,
  rows_per_pass=AUTO,
  only_unstable=True,
  pass_bytes=layer_bounds.DEFAULT_PASS_BYTES,
):
  """CROWN lower bounds, never looser than CROWN-IBP (and so than IBP).

  Returns:
    (lower rows, finish, the CROWN environment, its `Refinement`).
  """
  sets = _sets_by_id(graph, leaves)
  env, refinement = intermediate_bounds.refined_environment(
    graph, leaves, sets, only_unstable=only_unstable, pass_bytes=pass_bytes
  )
  out, start, finish = _start(graph, env, spec, "crown", both)
  lower = backward.lower_bound(
    graph,
    env,
    sets,
    {out: start},
    linear_rules.RULES,
    groups=_row_groups(start, rows_per_pass, env),
  )
  ibp_env = propagate(graph, leaves, ibp_rules.RULES, "CROWN")
  reference, _ = _crown_ibp_lower(
    graph, ibp_env, leaves, spec, both, rows_per_pass
  )
  return jnp.maximum(lower, reference), finish, env, refinement


_INTERMEDIATE_DOC = """only_unstable: run each hidden layer's backward pass for the neurons
      whose interval straddles a ReLU-like unit's threshold only (the others'
      relaxations are exact); the bounds of the output are the same. Rows
      are gathered per example when the intervals are concrete (outside
      ``jit``); under ``jit`` every neuron is a row.
    pass_bytes: approximate memory budget of one hidden layer's backward
      pass: its rows are taken in chunks of that many bytes of
      coefficients (same bounds); None for one pass."""


def crown(
  fn: Callable,
  bound: str = "both",
  rows_per_pass=AUTO,
  only_unstable: bool = True,
  pass_bytes: int | None = layer_bounds.DEFAULT_PASS_BYTES,
  example_group: int | None = None,
) -> Callable:
  """CROWN (Zhang et al., NeurIPS 2018): linear bounds for every layer.

  Args:
    fn: the function to bound.
    bound: "both", or "lower" (upper bounds of the output returned as +inf;
      intermediate bounds are always two-sided).
    {rows_per_pass}
    {intermediate}
    example_group: bound the batch this many examples at a time, in one
      program (`example_groups`: same bounds, cache-sized passes; 20 ran
      the small MNIST CNN's batch of 100 1.3× faster). Only the input sets
      and ``spec`` are split, so every other argument must be shared by
      the examples. None: the whole batch at once.

  Returns:
    ``bounded(*args, spec=None, **kwargs)``.
  """
  both = _check_bound(bound)
  rows_per_pass = _check_rows_per_pass(rows_per_pass)
  pass_bytes = _check_pass_bytes(pass_bytes)

  @functools.wraps(fn)
  def bounded(*args, spec=None, **kwargs):
    graph, leaves = _trace_checked(fn, args, kwargs)
    lower, finish, _, _ = _crown_lower(
      graph, leaves, spec, both, rows_per_pass, only_unstable, pass_bytes
    )
    return finish(lower)

  return example_groups.in_groups(bounded, example_group)


crown.__doc__ = crown.__doc__.format(
  rows_per_pass=_ROWS_PER_PASS_DOC, intermediate=_INTERMEDIATE_DOC
)


def _check_pass_bytes(pass_bytes):
  if pass_bytes is None or (isinstance(pass_bytes, int) and pass_bytes > 0):
    return pass_bytes
  raise ValueError(
    f"pass_bytes must be None or a positive int, got {pass_bytes!r}."
  )


def _unstable_relus(graph: Graph, env: Env) -> dict[int, Interval]:
  """Output id -> ReLU pre-activation interval of each max(x, c), min(x, c)
  and leaky ReLU.

  max(x, c) = c + relu(x - c); min(x, c) = c - relu(c - x);
  leaky_relu(x) = k x + (1 - k) relu(x).
  """
  found = {}
  for eqn in graph.eqns:
    if eqn.name not in ("max", "min", leaky_relu.NAME):
      continue
    args = [read(env, a) for a in eqn.inputs]
    bounded = [a for a in args if isinstance(a, Interval)]
    if eqn.name == leaky_relu.NAME:  # k x + (1 - k) relu(x)
      found[eqn.outputs[0]] = bounded[0]
    elif len(bounded) == 1:
      (x,) = bounded
      c = [a for a in args if not isinstance(a, Interval)][0]
      found[eqn.outputs[0]] = (
        Interval(x.lower - c, x.upper - c)
        if eqn.name == "max"
        else Interval(c - x.upper, c - x.lower)
      )
  return found


def _products(graph: Graph, env: Env) -> dict[int, tuple]:
  """Output id -> shape of each product of two bounded values."""
  bounded = _bounded_in(env)
  return {
    eqn.outputs[0]: as_interval(env[eqn.outputs[0]]).shape
    for eqn in graph.eqns
    if linear_rules.is_product(eqn, bounded)
  }


OPTIMIZE = ("all_layers", "output")


def _check_alpha_options(steps, intermediate_method, optimize):
  """The effective ``optimize`` ("all_layers" needs CROWN intermediates)."""
  if intermediate_method not in ("crown", "ibp"):
    raise ValueError(
      f"intermediate must be 'crown' or 'ibp', got {intermediate_method!r}."
    )
  if steps < 0:
    raise ValueError(f"steps must be >= 0, got {steps}.")
  if optimize is None:
    return "all_layers" if intermediate_method == "crown" else "output"
  if optimize not in OPTIMIZE:
    raise ValueError(
      f"optimize must be one of {OPTIMIZE} (or None), got {optimize!r}."
    )
  if optimize == "all_layers" and intermediate_method == "ibp":
    raise ValueError(
      "optimize='all_layers' optimizes the slopes of CROWN's intermediate "
      "bounds: use intermediate='crown', or optimize='output' with IBP "
      "intermediate bounds."
    )
  return optimize


def _verified(spec, rows: int):
  """best -> whether every specification's lower bound is positive (the
  lower rows only: with bound="both" the rest are negated upper bounds)."""
  if spec is None:
    return None
  return lambda best: jnp.all(best[:rows] > 0)


def alpha_crown(
  fn: Callable,
  steps: int = slope_optimization.DEFAULT_STEPS,
  optimizer: optax.GradientTransformation | None = None,
  intermediate: str = "crown",
  bound: str = "both",
  unroll: int | bool = 1,
  rows_per_pass=AUTO,
  optimize: str | None = None,
  share_slopes: bool = False,
  early_stop: bool = True,
  only_unstable: bool = True,
  pass_bytes: int | None = layer_bounds.DEFAULT_PASS_BYTES,
) -> Callable:
  """α-CROWN (Xu et al., ICLR 2021): CROWN with optimized lower slopes.

  The lower slope α ∈ [0, 1] of every unstable ReLU-like unit (max or min
  with a constant, leaky ReLU) and the mix of McCormick's planes of every
  product of two bounded values (`linear_rules.product`) are optimized by
  ``steps`` steps of ``optimizer`` on the sum of the output's lower bounds,
  starting from CROWN's (`slope_optimization`). With
  ``optimize="all_layers"`` (the default with CROWN intermediates) every
  backward pass has its own slopes — the output's, separately per
  specification row and example, and each hidden layer's, per neuron row
  (or shared by a layer's rows) — so the intermediate bounds tighten too;
  with ``optimize="output"`` only the output's pass is optimized, over fixed
  CROWN (or IBP) intermediate bounds. The best bound seen for each
  specification is returned, so the result is never looser than CROWN, and
  every bound seen is sound whatever the slopes in [0, 1] are.

  Args:
    fn: the function to bound.
    steps: optimization steps (default 100, α,β-CROWN's).
    optimizer: an optax gradient transformation (minimizes -bound); default
      Adam with learning rate 0.1 · 0.98^step.
    intermediate: "crown" (default) or "ibp" for the intermediate bounds.
    bound: "both", or "lower" (upper bounds returned as +inf; half the cost).
    unroll: the optimization loop's ``lax.scan`` unrolling (without early
      stopping): 1 (default) compiles one step; True compiles every step
      (on XLA:CPU, 20 steps on the small MNIST CNN ran 2.7–2.9× slower so).
    {rows_per_pass} Every optimization step takes the same groups.
    optimize: "all_layers" or "output"; None: "all_layers" with CROWN
      intermediate bounds, "output" with IBP ones.
    share_slopes: one set of slopes per hidden layer's pass, shared by all
      its rows (memory: the per-row slopes of a pass are rows × the units
      before it); the output's pass keeps per-row slopes.
    early_stop: with a ``spec``, stop once every specification's lower
      bound is positive (a ``while_loop``; ``unroll`` is then unused).
    {intermediate}

  Returns:
    ``bounded(*args, spec=None, **kwargs)``.
  """
  optimize = _check_alpha_options(steps, intermediate, optimize)
  optimizer = (
    optimizer
    if optimizer is not None
    else slope_optimization.default_optimizer()
  )
  both = _check_bound(bound)
  rows_per_pass = _check_rows_per_pass(rows_per_pass)
  pass_bytes = _check_pass_bytes(pass_bytes)

  @functools.wraps(fn)
  def bounded(*args, spec=None, **kwargs):
    graph, leaves = _trace_checked(fn, args, kwargs)
    if intermediate == "crown":
      reference, finish, env, refinement = _crown_lower(
        graph, leaves, spec, both, rows_per_pass, only_unstable, pass_bytes
      )
    else:
      env = propagate(graph, leaves, ibp_rules.RULES, "α-CROWN")
      reference, finish = _crown_ibp_lower(
        graph, env, leaves, spec, both, rows_per_pass
      )
    out, start, _ = _start(graph, env, spec, "alpha_crown", both)
    sets = _sets_by_id(graph, leaves)
    units, products = _unstable_relus(graph, env), _products(graph, env)
    groups = _row_groups(start, rows_per_pass, env)
    slopes = {
      "output": slope_optimization.initial_slopes(
        units, products, (start.shape[0],)
      )
    }
    if optimize == "all_layers":
      plans = intermediate_bounds.replan(
        graph, env, refinement, only_unstable, pass_bytes
      )
      slopes["layers"] = slope_optimization.layer_slopes(
        graph, plans, units, products, share_slopes
      )
      if not share_slopes:  # windowed passes take their slopes on windows
        for atom, windowed in intermediate_bounds.window_slopes(
          graph, env, sets, plans
        ).items():
          slopes["layers"][atom].update(windowed)

    def bound(slopes):
      pass_env = env
      if "layers" in slopes:
        pass_env, _ = intermediate_bounds.refined_environment(
          graph,
          leaves,
          sets,
          plans=plans,
          alphas=None if share_slopes else slopes["layers"],
          shared=slopes["layers"] if share_slopes else None,
          references=refinement.bounds,
          pass_bytes=pass_bytes,
        )
      return backward.lower_bound(
        graph,
        pass_env,
        sets,
        {out: start},
        linear_rules.RULES,
        slopes["output"],
        groups=groups,
      )

    done = _verified(spec, start.shape[0] // 2 if both else start.shape[0])
    best = slope_optimization.maximize(
      bound,
      slopes,
      reference,
      steps,
      optimizer,
      unroll=unroll,
      done=done if early_stop else None,
    )
    return finish(best)

  return bounded


alpha_crown.__doc__ = alpha_crown.__doc__.format(
  rows_per_pass=_ROWS_PER_PASS_DOC, intermediate=_INTERMEDIATE_DOC
)
