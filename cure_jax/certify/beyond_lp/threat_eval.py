"""Certified and empirical accuracy of a model under patches and geometry.

`evaluate_threats` certifies every point under every `Threat` (a point is
certified when all its regions are, `certify.regions`), then attacks the
correctly classified points left uncertified for the empirical upper bound —
a certified point is robust by its certificate, so attacking it could only
confirm that — and returns per-point records and a summary in the format of
the l_p reports (`certify.report`): columns ``certified_<threat>``,
``stage_<threat>``, ``attack_<threat>``, ``union_certified``.
`certify_checkpoint_beyond_lp` does it for a trained run and writes
``beyond_lp.csv`` / ``beyond_lp.json``.
"""

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from cure_jax import data
from cure_jax import workdir as workdir_lib
from cure_jax.certify import cascade, regions, report
from cure_jax.certify.beyond_lp.threats import Threat, threats_from_config
from cure_jax.models.call_adapter import adapt_apply


def _fraction(mask) -> dict[str, Any]:
  mask = np.asarray(mask, bool)
  return {
    "count": int(mask.sum()),
    "accuracy": float(mask.mean()) if mask.size else 0.0,
  }


def _threat_summary(
  threat: Threat,
  result: regions.RegionResult,
  reports,
  empirical,
  attack_seconds: float,
  attacked: int,
  num_examples: int,
) -> dict[str, Any]:
  stage_seconds = {r.method: r.run_seconds for r in reports}
  total = sum(stage_seconds.values()) + attack_seconds
  return {
    "description": threat.description,
    "regions": threat.region.num_regions,
    "certified": _fraction(result.certified),
    "certified_by_stage": {r.method: r.certified for r in reports},
    "empirical": _fraction(empirical),
    "rows_bounded": {r.method: r.rows for r in reports},
    "seconds": dict(stage_seconds, attack=attack_seconds),
    "compile_seconds": {r.method: r.compile_seconds for r in reports},
    "attacked_points": int(attacked),
    # Certification and attack together, compilation excluded.
    "seconds_per_point": total / max(num_examples, 1),
  }


def evaluate_threats(
  apply_fn,
  variables,
  images,
  labels,
  threats: Sequence[Threat],
  *,
  num_classes: int,
  methods: Sequence[str] = regions.REGION_METHODS,
  rows_per_batch: int = 512,
  log=print,
  key: jax.Array | None = None,
  progress_bar: bool = False,
) -> tuple[report.Records, dict[str, Any]]:
  """Certifies and attacks every point under every threat.

  ``apply_fn(variables, x, train=False) -> logits``, or a Flax module,
  ``train`` optional (`models.call_adapter`), must be the same object on
  every call (a jit cache key); images [N, H, W, C] in [0, 1]; ``methods`` a
  cascade from `regions.REGION_METHODS`; ``rows_per_batch`` (point, region)
  rows per bounded chunk; ``log`` None is silent; ``key`` the attacks'
  random starts (default ``jax.random.key(0)``; threat i gets
  ``fold_in(key, i)``); ``progress_bar`` a bar over the threats on stderr.
  Returns (records, summary): per-point columns and the JSON-ready summary.
  """
  apply_fn = adapt_apply(apply_fn)
  labels = np.asarray(labels, np.int64)
  predictions = np.asarray(
    cascade.predict(apply_fn, variables, images, num_classes), np.int64
  )
  correct = predictions == labels
  records = {
    "index": np.arange(len(labels)),
    "label": labels,
    "prediction": predictions,
    "correct": correct,
  }
  per_threat = {}
  stage_names = np.asarray(tuple(methods) + (report.STAGE_NONE,))
  key = jax.random.key(0) if key is None else key
  bar = tqdm.tqdm(
    total=len(threats),
    desc="beyond l_p",
    unit="threat",
    file=sys.stderr,
    disable=not progress_bar,
    dynamic_ncols=True,
  )
  for threat_index, threat in enumerate(threats):
    bar.set_postfix_str(threat.name)
    result, reports = regions.certify_regions(
      apply_fn,
      variables,
      images,
      labels,
      threat.region,
      num_classes=num_classes,
      methods=methods,
      rows_per_batch=rows_per_batch,
    )
    start = time.perf_counter()
    pending = np.flatnonzero(correct & ~result.certified)
    empirical = (
      np.asarray(
        threat.attack(
          apply_fn,
          variables,
          images,
          labels,
          pending,
          result.failing_region,
          jax.random.fold_in(key, threat_index),
        )
      )
      | result.certified
    )
    attack_seconds = time.perf_counter() - start
    records[f"certified_{threat.name}"] = result.certified
    records[f"stage_{threat.name}"] = stage_names[result.method_index]
    records[f"attack_{threat.name}"] = empirical
    entry = _threat_summary(
      threat,
      result,
      reports,
      empirical,
      attack_seconds,
      len(pending),
      len(labels),
    )
    per_threat[threat.name] = entry
    bar.update()
    if log:
      log(
        f"{threat.name}: certified {entry['certified']['accuracy']:.1%}, "
        f"empirical {entry['empirical']['accuracy']:.1%}, "
        f"{entry['seconds_per_point']:.3f} s/point"
      )
  bar.close()
  records["union_certified"] = correct & np.all(
    [records[f"certified_{t.name}"] for t in threats], axis=0
  )
  summary = {
    "num_examples": int(len(labels)),
    "clean": _fraction(correct),
    "methods": list(methods),
    "threats": per_threat,
    "union_certified": _fraction(records["union_certified"]),
  }
  return records, summary


def format_threat_table(summary: Mapping[str, Any]) -> str:
  """The summary as an aligned text table, one row per threat."""
  header = (
    "threat",
    "regions",
    "certified",
    "empirical",
    "s/point",
    "threat model",
  )
  rows = [header]
  for name, entry in summary["threats"].items():
    rows.append(
      (
        name,
        str(entry["regions"]),
        f"{entry['certified']['accuracy']:.1%}",
        f"{entry['empirical']['accuracy']:.1%}",
        f"{entry['seconds_per_point']:.4f}",
        entry["description"],
      )
    )
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  lines = [
    "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows
  ]
  return (
    f"{summary['num_examples']} test points, clean accuracy "
    f"{summary['clean']['accuracy']:.2%}\n" + "\n".join(lines)
  )


def certify_checkpoint_beyond_lp(
  config,
  workdir: str,
  output_name: str = "beyond_lp",
  log=print,
  progress_bar: bool = False,
) -> dict[str, Any]:
  """Certifies the newest checkpoint of ``workdir`` beyond l_p under the
  threats of ``config.eval.beyond_lp``; returns the summary, also written to
  ``workdir/<output_name>.json`` (and per-point ``.csv``), with the config
  and its provenance (`workdir.describe`). The attacks' random starts come
  from ``config.seed``.

  Raises:
    ValueError: a bad ``config.eval.beyond_lp`` setting (before anything
      is loaded).
    NoCheckpointError: ``workdir`` has no checkpoint.
    CheckpointRestoreError: its checkpoint cannot be restored.
    DataNotFoundError: the test split is not available.
  """
  from cure_jax.checkpoint import restore_for_eval  # pylint: disable=g-import-not-at-top

  settings = config.eval.beyond_lp
  info = data.dataset_info(config.dataset.name)
  image_shape = (
    (info.eval_crop, info.eval_crop)
    if info.eval_crop
    else tuple(info.image_shape[:2])
  )
  threats = threats_from_config(settings, image_shape)
  model, variables = restore_for_eval(config, workdir)
  test = data.load_config_split(config, "test")
  if settings.examples:
    test = test.take(min(settings.examples, test.num_examples))
  images = data.to_unit_float(test.images)
  if info.eval_crop:
    images = data.center_crop(images, info.eval_crop)
  records, summary = evaluate_threats(
    model.apply,
    variables,
    np.asarray(images),
    test.labels,
    threats,
    num_classes=config.model.num_classes,
    methods=tuple(settings.methods),
    rows_per_batch=settings.rows_per_batch,
    log=log,
    key=jax.random.key(config.seed),
    progress_bar=progress_bar,
  )
  summary = dict(
    summary,
    method=config.method,
    dataset=info.name,
    workdir=os.path.abspath(workdir),
    settings=json.loads(json.dumps(settings.to_dict())),
    **workdir_lib.describe(config),
  )
  report.write_report(workdir, records, summary, name=output_name)
  if log:
    log(format_threat_table(summary))
  return summary
