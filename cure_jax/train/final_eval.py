"""The evaluation at the end of training: clean and certified accuracy.

Runs over the test split (``config.eval.final_examples``, 0 = all) with the
cheap stages of the certification cascade (``config.eval.final_methods``,
IBP then CROWN-IBP by default) at the setting's radii for each norm. The full
cascade with α-CROWN and the PGD upper bounds on the paper's 1000 points is
``python -m cure_jax.certify``. With several processes each evaluates its
share of the test set and the counts are summed over processes, so every
process reports the global figures (certification seconds are summed too:
compute-seconds per point).
"""

import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from cure_jax import data
from cure_jax.certify.cascade import certify_batch
from cure_jax.parallel.distributed import sum_over_processes

NORM_RADIUS_KEYS = {"linf": "eps_linf", "l2": "eps_l2", "l1": "eps_l1"}


def evaluate_model(
  config,
  model,
  variables,
  test,
  info,
  log: Callable[..., None] = print,
  progress_bar: bool = False,
) -> dict[str, Any]:
  """Clean accuracy and certified accuracy per norm (and their union).

  ``log`` gets the one-line result; ``progress_bar`` shows a bar with ETA
  over this process's batches on stderr.
  """
  if config.eval.final_examples:
    test = test.take(config.eval.final_examples)
  radii = {n: config.eval[NORM_RADIUS_KEYS[n]] for n in config.eval.norms}
  methods = tuple(config.eval.final_methods)
  num_classes = config.model.num_classes

  @jax.jit
  def predict(x):
    return jnp.argmax(model.apply(variables, x, train=False), -1)

  def certify(norm, x, y):  # jits its stages itself (cached per shape)
    return certify_batch(
      model.apply,
      variables,
      x,
      y,
      norm=norm,
      eps=radii[norm],
      methods=methods,
      alpha_steps=config.eval.alpha_steps,
      num_classes=num_classes,
    ).certified

  correct, total = 0, 0
  certified = {norm: 0 for norm in radii}
  union = 0
  seconds = {norm: 0.0 for norm in radii}
  batches = data.eval_batches(
    test,
    global_batch_size=config.eval.batch_size,
    center_crop=info.eval_crop,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  for batch in tqdm.tqdm(
    batches,
    total=data.num_eval_batches(test.num_examples, config.eval.batch_size),
    desc="final evaluation",
    unit="batch",
    file=sys.stderr,
    disable=not progress_bar,
    dynamic_ncols=True,
  ):
    mask = batch.mask
    ok = np.asarray(predict(batch.images)) == batch.labels
    all_norms = ok.copy()
    for norm in radii:
      start = time.monotonic()
      flags = np.asarray(certify(norm, batch.images, batch.labels))
      seconds[norm] += time.monotonic() - start
      certified[norm] += int(np.sum(flags & ok & mask))
      all_norms &= flags
    union += int(np.sum(all_norms & mask))
    correct += int(np.sum(ok & mask))
    total += int(mask.sum())
  # Each process evaluated its own share of the test set.
  totals = sum_over_processes(
    dict(
      correct=correct,
      total=total,
      union=union,
      **{f"certified_{n}": c for n, c in certified.items()},
      **{f"seconds_{n}": t for n, t in seconds.items()},
    )
  )
  correct, total, union = (
    int(totals[k]) for k in ("correct", "total", "union")
  )
  certified = {n: int(totals[f"certified_{n}"]) for n in radii}
  seconds = {n: totals[f"seconds_{n}"] for n in radii}
  results = {
    "test_examples": total,
    "clean_accuracy": correct / total,
    "union_certified_accuracy": union / total,
    "certification_methods": list(methods),
  }
  for norm, eps in radii.items():
    results[f"certified_accuracy_{norm}"] = certified[norm] / total
    results[f"eps_{norm}"] = eps
    results[f"certify_seconds_per_point_{norm}"] = seconds[norm] / total
  log(
    "final evaluation: "
    + ", ".join(
      f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
      for k, v in sorted(results.items())
    )
  )
  return results
