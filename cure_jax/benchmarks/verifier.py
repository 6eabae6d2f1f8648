r"""cure_jax's bound methods against auto_LiRPA's, same weights, same CPU.

  python -m cure_jax.benchmarks.verifier [--models=small_cnn,cnn7] \
      [--methods=crown,alpha_crown,crown_ibp] [--batch=8[,100,...]] \
      [--eps=0.1] [--alpha-steps=20] [--lirpa-python=/tmp/lirpa/bin/python] \
      [--no-peer] [--plain-jit] [--default-host-memory] \
      [--peer-kept-memory] [--out=results.json]

For each model (MNIST shape, random IBP-initialized weights without
BatchNorm, random inputs in [0, 1], random labels), each batch size and
each method — CROWN, α-CROWN over every layer, CROWN-IBP, lower bounds of
the 9 margins over the l∞ ball of radius ``eps`` ∩ [0, 1] — one subprocess
bounds the batch repeatedly and reports the seconds of the first call
(cure_jax: tracing and compilation included) and the median of up to 5
later calls (fewer when they pass 60 s together), the peak resident memory
of the process (``ru_maxrss``) and the mean margin bound. auto_LiRPA
(PyTorch, in a virtualenv of its own, e.g. ``python -m venv /tmp/lirpa``
and a pip install of its source) runs the same weights,
exported to .npz, under ``--lirpa-python``; its columns are skipped, saying
so, when that interpreter or the package is missing (``--no-peer`` runs
cure_jax alone). α-CROWN runs the same
steps on both sides (Adam, lr 0.1 decayed by 0.98 per step, intermediate
bounds re-optimized, no early stop; slopes shared by each layer's rows on
CNN7). cure_jax's calls are jitted with `cure_jax.bounds.jit` (as in the
certification cascade), so every neuron of a hidden layer is a row of its
backward pass (as in auto_LiRPA on these nets, where IBP leaves nearly
every neuron unstable), in a process that keeps its freed memory
(`cure_jax.host_memory.keep_freed_memory`, as ``python -m cure_jax.certify``
does; ``--default-host-memory``: without it). ``--peer-kept-memory`` gives
auto_LiRPA's process glibc's same settings (``MALLOC_MMAP_MAX_=0``, no
trimming), what they are worth to PyTorch.
"""

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

METHODS = ("crown", "alpha_crown", "crown_ibp")
LIRPA_METHODS = {
  "crown": "CROWN",
  "alpha_crown": "alpha-CROWN",
  "crown_ibp": "CROWN-IBP",
}
NUM_CLASSES = 10
# A first call slower than this is not repeated (its time stands alone).
SKIP_SECOND_CALL_AFTER_S = 600.0
# Later calls: at least REPEAT_CALLS and more until they total MIN_TIMED_S
# (a CROWN-IBP call of a few milliseconds is timed a few hundred times), at
# most MAX_CALLS, and none once their total passes REPEAT_BUDGET_S; the
# steady time is their median.
REPEAT_CALLS = 5
MIN_TIMED_S = 1.0
MAX_CALLS = 1000
REPEAT_BUDGET_S = 60.0
IMAGE_SHAPE = (28, 28, 1)


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(model_name: str, batch: int, seed: int = 0):
  """(model, variables, x [B, 28, 28, 1], labels [B]), deterministic."""
  import jax  # noqa: PLC0415 (workers import JAX only when they need it)

  from cure_jax.models import get_model, ibp_init  # noqa: PLC0415

  model = get_model(model_name, num_classes=NUM_CLASSES, batch_norm=False)
  k_x, k_y, k_init, k_ibp = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.uniform(k_x, (batch,) + IMAGE_SHAPE)
  labels = jax.random.randint(k_y, (batch,), 0, NUM_CLASSES)
  variables = model.init(k_init, x[:2], train=False)
  variables = dict(variables, params=ibp_init(variables["params"], k_ibp))
  return model, variables, x, labels


def _torch_layers(model, params) -> list[dict]:
  """The model as a list of layers in PyTorch layouts (NCHW)."""
  layers, height = [], IMAGE_SHAPE[0]
  padding = model.padding
  pad = 0 if padding == "VALID" else int(padding[0][0])
  channels = IMAGE_SHAPE[-1]
  for i, stride in enumerate(model.conv_strides):
    kernel = np.asarray(params[f"conv_{i}"]["kernel"])  # [kh, kw, in, out]
    layers.append(
      dict(
        kind="conv",
        weight=kernel.transpose(3, 2, 0, 1),
        bias=np.asarray(params[f"conv_{i}"]["bias"]),
        stride=int(stride),
        padding=pad,
      )
    )
    height = (height + 2 * pad - kernel.shape[0]) // stride + 1
    channels = kernel.shape[-1]
  names = [f"dense_{i}" for i in range(len(model.dense_widths))] + ["logits"]
  for j, name in enumerate(names):
    kernel = np.asarray(params[name]["kernel"])  # [in, out]
    if j == 0:  # NHWC flattening -> NCHW flattening
      kernel = (
        kernel.reshape(height, height, channels, -1)
        .transpose(2, 0, 1, 3)
        .reshape(kernel.shape)
      )
    layers.append(
      dict(
        kind="dense",
        weight=kernel.T,
        bias=np.asarray(params[name]["bias"]),
        flatten=j == 0,
      )
    )
  return layers


def export(path: str, model_name: str, batch: int, eps: float) -> None:
  """Writes the weights, inputs (NCHW) and margin specification to .npz."""
  from cure_jax.bounds import margin_spec  # noqa: PLC0415

  model, variables, x, labels = build(model_name, batch)
  arrays = {
    "x": np.asarray(x).transpose(0, 3, 1, 2),
    "spec": np.asarray(margin_spec(labels, NUM_CLASSES)),
    "eps": np.float32(eps),
    "logits": np.asarray(model.apply(variables, x, train=False)),
  }
  layers = _torch_layers(model, variables["params"])
  for i, layer in enumerate(layers):
    arrays[f"w{i}"], arrays[f"b{i}"] = layer["weight"], layer["bias"]
    arrays[f"meta{i}"] = np.array(
      [
        layer["kind"] == "conv",
        layer.get("stride", 0),
        layer.get("padding", 0),
        layer.get("flatten", False),
      ]
    )
  arrays["layers"] = np.int64(len(layers))
  np.savez(path, **arrays)


def bounding_call(
  model_name, method, batch, eps, alpha_steps, share=False, plain_jit=False
) -> functools.partial:
  """The jitted bounding call of a cure_jax method (every neuron a row):
  `cure_jax.bounds.jit`, or `jax.jit` with ``plain_jit``; a partial of the
  jitted function (``.func``) over its arguments (``.args``). CROWN bounds
  the batch in groups of `example_groups.CROWN_GROUP` examples, as the
  certify cascade does (the same bounds)."""
  import jax  # noqa: PLC0415

  from cure_jax import bounds  # noqa: PLC0415
  from cure_jax.bounds import example_groups  # noqa: PLC0415

  model, variables, x, labels = build(model_name, batch)
  spec = bounds.margin_spec(labels, NUM_CLASSES)
  transform = {
    "crown": functools.partial(
      bounds.crown, bound="lower", example_group=example_groups.CROWN_GROUP
    ),
    "crown_ibp": functools.partial(bounds.crown_ibp, bound="lower"),
    "alpha_crown": functools.partial(
      bounds.alpha_crown,
      steps=alpha_steps,
      bound="lower",
      early_stop=False,
      optimize="all_layers",
      share_slopes=share,
    ),
  }[method](model.apply)

  @(jax.jit if plain_jit else bounds.jit)
  def lower(variables, x, spec):
    ball = bounds.LinfBall(x, eps, domain=(0.0, 1.0))
    return transform(variables, ball, spec=spec, train=False).lower

  return functools.partial(lower, variables, x, spec)


def _more_calls(times, repeat_calls, min_timed_s, max_calls, budget_s):
  total = sum(times)
  return (
    len(times) < max_calls
    and total < budget_s
    and (len(times) < repeat_calls or total < min_timed_s)
  )


def _timed(call) -> dict:
  start = time.perf_counter()
  lower = np.asarray(call())
  first = time.perf_counter() - start
  if first > SKIP_SECOND_CALL_AFTER_S:
    return dict(
      first_s=first, peak_mb=_peak_mb(), mean_margin=float(lower.mean())
    )
  times = []
  while _more_calls(
    times, REPEAT_CALLS, MIN_TIMED_S, MAX_CALLS, REPEAT_BUDGET_S
  ):
    start = time.perf_counter()
    lower = np.asarray(call())
    times.append(time.perf_counter() - start)
  return dict(
    first_s=first,
    steady_s=float(np.median(times)),
    calls=len(times),
    peak_mb=_peak_mb(),
    mean_margin=float(lower.mean()),
  )


def jax_worker(
  model_name,
  method,
  batch,
  eps,
  alpha_steps,
  share,
  plain_jit=False,
  keep_memory=True,
) -> dict:
  if keep_memory:  # before JAX's CPU client exists
    from cure_jax import host_memory  # noqa: PLC0415

    host_memory.keep_freed_memory()
  return _timed(
    bounding_call(model_name, method, batch, eps, alpha_steps, share, plain_jit)
  )


LIRPA_SCRIPT = textwrap.dedent(
  """
  import json, resource, sys, time
  import numpy as np, torch
  from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

  path, method, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
  share = sys.argv[4] == "1"
  REPEAT_CALLS, REPEAT_BUDGET_S = int(sys.argv[5]), float(sys.argv[6])
  MIN_TIMED_S, MAX_CALLS = float(sys.argv[7]), int(sys.argv[8])
  def more_calls(times):  # as cure_jax's worker: `_more_calls`
    return (len(times) < MAX_CALLS and sum(times) < REPEAT_BUDGET_S
            and (len(times) < REPEAT_CALLS or sum(times) < MIN_TIMED_S))
  d = np.load(path)
  layers = []
  for i in range(int(d["layers"])):
    w, b = torch.tensor(d[f"w{i}"]), torch.tensor(d[f"b{i}"])
    is_conv, stride, padding, flatten = (int(v) for v in d[f"meta{i}"])
    if flatten:
      layers.append(torch.nn.Flatten())
    if is_conv:
      layer = torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]),
                              stride, padding)
    else:
      layer = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
      layer.weight.copy_(w); layer.bias.copy_(b)
    layers += [layer, torch.nn.ReLU()]
  model = torch.nn.Sequential(*layers[:-1]).eval()
  x, spec, eps = torch.tensor(d["x"]), torch.tensor(d["spec"]), float(d["eps"])
  with torch.no_grad():  # the same function as the JAX model
    np.testing.assert_allclose(model(x).numpy(), d["logits"], atol=1e-3,
                               rtol=1e-3)
  bounded = BoundedModule(model, torch.zeros_like(x), device="cpu")
  if method == "alpha-CROWN":
    bounded.set_bound_opts({"optimize_bound_args": {
      "iteration": steps, "lr_alpha": 0.1, "lr_decay": 0.98,
      "fix_interm_bounds": False, "early_stop_patience": steps + 1,
      "use_shared_alpha": share}})
  ptb = PerturbationLpNorm(norm=float("inf"), eps=eps,
                           x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
  bx = BoundedTensor(x, ptb)
  def call():
    lower, _ = bounded.compute_bounds(x=(bx,), C=spec, method=method,
                                      bound_upper=False)
    return lower.detach().numpy()
  start = time.perf_counter(); lower = call()
  first, times = time.perf_counter() - start, []
  while more_calls(times):
    start = time.perf_counter(); lower = call()
    times.append(time.perf_counter() - start)
  print(json.dumps(dict(first_s=first, steady_s=float(np.median(times)),
    calls=len(times),
    peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    mean_margin=float(lower.mean()))))
  """
)


# glibc's environment for `keep_freed_memory`'s allocator settings.
KEPT_MEMORY_ENV = {
  "MALLOC_MMAP_MAX_": "0",
  "MALLOC_TRIM_THRESHOLD_": str(2**62),
}


def _run(command, timeout, env=None) -> dict:
  """The JSON a worker prints last, or the reason there is none."""
  try:
    done = subprocess.run(
      command,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
      env=None if env is None else {**os.environ, **env},
    )
  except subprocess.TimeoutExpired:
    return dict(error=f"timed out after {timeout} s")
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode != 0 or not lines:
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return dict(error=f"exit {done.returncode}: " + " | ".join(tail))
  return json.loads(lines[-1])


def lirpa_available(python: str) -> str | None:
  """None when ``python`` imports auto_LiRPA, else why not."""
  if not os.path.exists(python):
    return f"{python} not found"
  check = subprocess.run(
    [python, "-c", "import auto_LiRPA"], capture_output=True, check=False
  )
  return None if check.returncode == 0 else "auto_LiRPA not installed there"


def run(
  models=("small_cnn", "cnn7"),
  batches=(8,),
  eps: float = 0.1,
  alpha_steps: int = 20,
  lirpa_python: str | None = "/tmp/lirpa/bin/python",
  timeout: float = 1800.0,
  model_timeouts: dict | None = None,
  shared_slopes=("cnn7",),
  methods=METHODS,
  plain_jit: bool = False,
  keep_memory: bool = True,
  peer_kept_memory: bool = False,
) -> list[dict]:
  """One row per model, batch size and method, in that order:
  ``{"model", "batch", "method", "cure_jax": cell, "auto_LiRPA": cell}``.

  A cell holds the worker's timings (`_timed`) or ``{"error": why}``.
  ``lirpa_python=None`` runs cure_jax alone (auto_LiRPA's cells say so);
  ``model_timeouts`` overrides ``timeout`` (seconds per subprocess) by model;
  α-CROWN shares each layer's slopes across its rows on ``shared_slopes``
  (both libraries), whose per-row slopes would not fit in memory;
  ``plain_jit`` compiles cure_jax's calls with `jax.jit` instead of
  `cure_jax.bounds.jit` (what the compiler options are worth);
  ``keep_memory=False`` runs them without
  `cure_jax.host_memory.keep_freed_memory`, ``peer_kept_memory`` runs
  auto_LiRPA with glibc's same settings (`KEPT_MEMORY_ENV`).
  """
  lirpa_missing = (
    "not asked for (--no-peer)"
    if lirpa_python is None
    else lirpa_available(lirpa_python)
  )
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    script = os.path.join(tmp, "lirpa_worker.py")
    with open(script, "w") as f:
      f.write(LIRPA_SCRIPT)
    for model_name in models:
      limit = (model_timeouts or {}).get(model_name, timeout)
      share = model_name in shared_slopes
      for batch in batches:
        npz = os.path.join(tmp, f"{model_name}-{batch}.npz")
        # Exported by a subprocess: Linux keeps ru_maxrss across execve, so
        # workers report at least this runner's size, kept free of JAX.
        exported = _run(
          [
            sys.executable,
            "-m",
            "cure_jax.benchmarks.verifier",
            "--export",
            json.dumps([npz, model_name, batch, eps]),
          ],
          limit,
        )
        if "error" in exported:
          raise RuntimeError(f"exporting {model_name}: {exported['error']}")
        for method in methods:
          worker = [
            sys.executable,
            "-m",
            "cure_jax.benchmarks.verifier",
            "--worker",
            json.dumps(
              dict(
                model_name=model_name,
                method=method,
                batch=batch,
                eps=eps,
                alpha_steps=alpha_steps,
                share=share,
                plain_jit=plain_jit,
                keep_memory=keep_memory,
              )
            ),
          ]
          row = dict(
            model=model_name,
            batch=batch,
            method=method,
            kept_memory=dict(cure_jax=keep_memory, auto_LiRPA=peer_kept_memory),
          )
          row["cure_jax"] = _run(worker, limit)
          row["auto_LiRPA"] = (
            dict(error=f"skipped: {lirpa_missing}")
            if lirpa_missing
            else _run(
              [
                lirpa_python,
                script,
                npz,
                LIRPA_METHODS[method],
                str(alpha_steps),
                str(int(share)),
                str(REPEAT_CALLS),
                str(REPEAT_BUDGET_S),
                str(MIN_TIMED_S),
                str(MAX_CALLS),
              ],
              limit,
              KEPT_MEMORY_ENV if peer_kept_memory else None,
            )
          )
          rows.append(row)
          print(json.dumps(row), flush=True)
  return rows


def _milliseconds(seconds: float) -> str:
  """Three significant digits, never in exponent form."""
  ms = 1e3 * seconds
  digits = 0 if ms >= 100 else 1 if ms >= 10 else 2 if ms >= 1 else 3
  return f"{ms:.{digits}f}"


def table(rows: list[dict]) -> str:
  """A Markdown table: milliseconds per point (later calls' median, then
  the first call's), the speed-up, peak memory and the mean margin bound."""
  lines = [
    "| model | batch | method | cure_jax ms/point (1st call) | auto_LiRPA "
    "ms/point (1st call) | speed-up | cure_jax peak MB | auto_LiRPA peak MB "
    "| mean margin bound (cure_jax / auto_LiRPA) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]

  def per_point(cell, key, batch):
    if key in cell:
      return _milliseconds(cell[key] / batch)
    return cell.get("error", "—")

  def times(cell, batch):
    return (
      f"{per_point(cell, 'steady_s', batch)} "
      f"({per_point(cell, 'first_s', batch)})"
      if "steady_s" in cell
      else per_point(cell, "first_s", batch)
    )

  def other(cell, key, fmt):
    return fmt.format(cell[key]) if key in cell else "—"

  def steady(cell):
    return cell.get("steady_s", cell.get("first_s"))

  for row in rows:
    ours, theirs, batch = row["cure_jax"], row["auto_LiRPA"], row["batch"]
    speed = (
      f"{steady(theirs) / steady(ours):.2f}×"
      if steady(ours) and steady(theirs)
      else "—"
    )
    lines.append(
      f"| {row['model']} | {batch} | {row['method']} | {times(ours, batch)} | "
      f"{times(theirs, batch)} | {speed} | "
      f"{other(ours, 'peak_mb', '{:.0f}')} | "
      f"{other(theirs, 'peak_mb', '{:.0f}')} | "
      f"{other(ours, 'mean_margin', '{:.3f}')} / "
      f"{other(theirs, 'mean_margin', '{:.3f}')} |"
    )
  return "\n".join(lines)


def _positive_ints(text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(item) for item in text.split(",") if item)
  except ValueError:
    values = ()
  if not values or min(values) < 1:
    raise SystemExit(f"--batch: expected sizes like 8 or 8,100, got {text!r}.")
  return values


def _checked_methods(names: str) -> tuple[str, ...]:
  methods = tuple(name for name in names.split(",") if name)
  unknown = [name for name in methods if name not in METHODS]
  if unknown or not methods:
    raise SystemExit(
      f"--methods: unknown {unknown or names!r}; choose from {METHODS}."
    )
  return methods


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="small_cnn,cnn7")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument(
    "--batch", default="8", help="batch sizes, e.g. 8 or 8,100"
  )
  parser.add_argument("--eps", type=float, default=0.1)
  parser.add_argument("--alpha-steps", type=int, default=20)
  parser.add_argument("--lirpa-python", default="/tmp/lirpa/bin/python")
  parser.add_argument(
    "--no-peer", action="store_true", help="run cure_jax alone"
  )
  parser.add_argument("--timeout", type=float, default=1800.0)
  parser.add_argument(
    "--model-timeouts",
    default="",
    help="per-model seconds, e.g. cnn7=180,small_cnn=1200",
  )
  parser.add_argument(
    "--plain-jit",
    action="store_true",
    help="compile cure_jax's calls with jax.jit, not cure_jax.bounds.jit",
  )
  parser.add_argument(
    "--default-host-memory",
    action="store_true",
    help="run cure_jax without cure_jax.host_memory.keep_freed_memory",
  )
  parser.add_argument(
    "--peer-kept-memory",
    action="store_true",
    help="run auto_LiRPA with glibc's kept-memory settings too",
  )
  parser.add_argument("--out", default=None)
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--export", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.export is not None:
    export(*json.loads(args.export))
    print(json.dumps(dict(peak_mb=_peak_mb())))
    return
  if args.worker is not None:
    print(json.dumps(jax_worker(**json.loads(args.worker))))
    return
  results = run(
    tuple(args.models.split(",")),
    _positive_ints(args.batch),
    args.eps,
    args.alpha_steps,
    None if args.no_peer else args.lirpa_python,
    args.timeout,
    {
      name: float(seconds)
      for name, seconds in (
        item.split("=") for item in args.model_timeouts.split(",") if item
      )
    },
    methods=_checked_methods(args.methods),
    plain_jit=args.plain_jit,
    keep_memory=not args.default_host_memory,
    peer_kept_memory=args.peer_kept_memory,
  )
  print(table(results))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
