r"""Exports a trained model as a VNN-COMP benchmark: ONNX, VNNLIB, instances.csv.

  python -m cure_jax.export --workdir=/tmp/mnist_sabr [--examples=10] \
      [--norms=linf] [--eps=0.1] [--timeout=60] \
      [--out_dir=/tmp/mnist_sabr/vnncomp]

Restores the newest checkpoint of ``workdir`` with the config the run
recorded there (``--config=...`` names another) and writes into
``out_dir`` (default ``workdir/vnncomp``)::

  onnx/model.onnx                 the eval-mode model (BatchNorm folded, NCHW)
  specs/prop_<i>_linf_<eps>.vnnlib    one per test point i < examples
  instances.csv                   onnx,vnnlib,timeout rows
  export.json                     the report, with the config and provenance

The ONNX model is checked by onnxruntime (and by `load_onnx`) against the
JAX logits on the exported test points; a maximum absolute difference above
``--tolerance`` (1e-5) is an error. Each property is the test point's l∞ box
of radius ``eps`` (``config.eval.eps_linf`` by default) ∩ [0, 1], with
"some other logit ≥ the label's" as the unsafe outputs, so unsat means
robust. VNNLIB bounds inputs by boxes only: l2 and l1 balls are not
exported (see docs/interchange.md).
"""

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from cure_jax import cli, log_setup
from cure_jax import workdir as workdir_lib
from cure_jax.types import PIXEL_DOMAIN, PyTree


def define_flags() -> None:
  """The command line's flags; defined only when the module runs as a
  program, so that importing the library defines none (another program's
  ``--config`` or ``--workdir`` would clash)."""
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Training config of the checkpoint (default: the one the run recorded in "
    "--workdir).",
    lock_config=True,
  )
  flags.DEFINE_string("workdir", None, "The run's directory.")
  flags.DEFINE_integer(
    "examples", 10, "Properties for the first N test points."
  )
  flags.DEFINE_list(
    "norms", ["linf"], "Threat models to export; VNNLIB expresses linf only."
  )
  flags.DEFINE_float("eps", None, "l∞ radius (default: config.eval.eps_linf).")
  flags.DEFINE_float("timeout", 60.0, "Seconds per instance in instances.csv.")
  flags.DEFINE_float(
    "tolerance", 1e-5, "Largest allowed |ONNX − JAX| logit difference."
  )
  flags.DEFINE_string(
    "out_dir", None, "Benchmark folder (default: <workdir>/vnncomp)."
  )
  flags.mark_flags_as_required(["workdir"])


ONNX_FILE = os.path.join("onnx", "model.onnx")
SPECS_DIR = "specs"
REPORT_FILE = "export.json"


class ExportMismatchError(ValueError):
  """The exported ONNX model's logits differ from the JAX model's."""


def check_norms(norms: Sequence[str]) -> None:
  """Raises a ValueError for a norm VNNLIB cannot express (l2, l1)."""
  unsupported = [n for n in norms if n != "linf"]
  if unsupported:
    raise ValueError(
      f"VNNLIB bounds inputs by boxes only, so {unsupported} balls cannot "
      "be exported (their bounding box would be a different, larger threat "
      "model); certify them with python -m cure_jax.certify. Use "
      "--norms=linf."
    )


def _nchw(images: np.ndarray) -> np.ndarray:
  return images.transpose(0, 3, 1, 2) if images.ndim == 4 else images


def max_logit_differences(
  onnx_path: str, model, variables: PyTree, images: np.ndarray
) -> dict[str, float]:
  """Max |logit difference| of onnxruntime and `load_onnx` vs. the JAX model.

  Args:
    onnx_path: the exported model.
    model: the Flax model.
    variables: its variables.
    images: [B, ...] test points in the Flax (NHWC) layout.

  Returns:
    ``{'onnxruntime': d1, 'load_onnx': d2}``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import onnxruntime  # pylint: disable=g-import-not-at-top

  from cure_jax.interchange import load_onnx  # pylint: disable=g-import-not-at-top
  from cure_jax.parallel.precision import certification_precision  # pylint: disable=g-import-not-at-top

  with certification_precision():
    reference = np.asarray(
      jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    )
    apply_fn, params = load_onnx(onnx_path)
    imported = np.asarray(jax.jit(apply_fn)(params, _nchw(images)))
  session = onnxruntime.InferenceSession(
    onnx_path, providers=["CPUExecutionProvider"]
  )
  name = session.get_inputs()[0].name
  runtime = session.run(None, {name: _nchw(images).astype(np.float32)})[0]
  return {
    "onnxruntime": float(np.max(np.abs(runtime - reference))),
    "load_onnx": float(np.max(np.abs(imported - reference))),
  }


def write_benchmark(
  model,
  variables: PyTree,
  images: np.ndarray,
  labels: np.ndarray,
  out_dir: str,
  *,
  eps: float,
  timeout: float = 60.0,
  tolerance: float = 1e-5,
  norms: Sequence[str] = ("linf",),
  log: Callable[[str], Any] | None = print,
  config=None,
) -> dict[str, Any]:
  """Writes the ONNX model, one l∞ property per image and instances.csv.

  Args:
    model: a `ConvNet`/`SmallCNN`/`CNN7` or `MLP`.
    variables: its ``{'params', 'batch_stats'}``.
    images: [N, H, W, C] (or [N, D]) test points in [0, 1], Flax layout.
    labels: [N] their labels.
    out_dir: the benchmark folder (created).
    eps: the l∞ radius.
    timeout: seconds per instance.
    tolerance: the largest allowed logit difference.
    norms: must be ``('linf',)`` (see `check_norms`).
    log: progress lines (None: silent).
    config: the model's training config, recorded in the report (None: the
      report records the provenance only).

  Returns:
    The report (also in ``out_dir/export.json``): paths, the logit
    differences, the radius, the instance count, and the config and its
    provenance (`workdir.describe`).

  Raises:
    ExportMismatchError: a logit difference exceeds ``tolerance``.
    ValueError: a norm other than linf, or a model `to_onnx` does not export.
  """
  import onnx  # pylint: disable=g-import-not-at-top

  from cure_jax.interchange import robustness_property, to_onnx, write_instances  # pylint: disable=g-import-not-at-top

  check_norms(norms)
  images = np.asarray(images, np.float32)
  os.makedirs(os.path.join(out_dir, "onnx"), exist_ok=True)
  os.makedirs(os.path.join(out_dir, SPECS_DIR), exist_ok=True)
  onnx_path = os.path.join(out_dir, ONNX_FILE)
  onnx.save(to_onnx(model, variables, images.shape[1:]), onnx_path)
  differences = max_logit_differences(onnx_path, model, variables, images)
  if max(differences.values()) > tolerance:
    raise ExportMismatchError(
      f"the ONNX model's logits differ from the JAX model's by up to "
      f"{differences} (tolerance {tolerance}) on {len(images)} test points."
    )
  num_classes = int(np.shape(variables["params"]["logits"]["kernel"])[-1])
  lo, hi = PIXEL_DOMAIN
  rows = []
  for i, (image, label) in enumerate(zip(_nchw(images), labels)):
    x = np.float64(image)
    text = robustness_property(
      np.clip(x - eps, lo, hi),
      np.clip(x + eps, lo, hi),
      int(label),
      num_classes,
      comment=(
        f"Test point {i} (label {int(label)}): l∞ ball of radius {eps!r} ∩ "
        f"[{lo}, {hi}], inputs in NCHW order.\nUnsat: the label's logit is "
        "the largest everywhere in the box."
      ),
    )
    name = os.path.join(SPECS_DIR, f"prop_{i}_linf_{eps:g}.vnnlib")
    with open(os.path.join(out_dir, name), "w") as f:
      f.write(text)
    rows.append((ONNX_FILE, name, timeout))
  write_instances(os.path.join(out_dir, "instances.csv"), rows)
  report = {
    "onnx": onnx_path,
    "instances": len(rows),
    "eps_linf": eps,
    "max_abs_logit_difference": differences,
    "tolerance": tolerance,
  }
  if config is None:
    report["provenance"] = workdir_lib.provenance()
  else:
    report.update(workdir_lib.describe(config))
  with open(os.path.join(out_dir, REPORT_FILE), "w") as f:
    json.dump(report, f, indent=2, default=str)
  if log:
    log(
      f"wrote {onnx_path} and {len(rows)} properties to {out_dir}; max "
      f"|logit difference| onnxruntime {differences['onnxruntime']:.2e}, "
      f"load_onnx {differences['load_onnx']:.2e}"
    )
  return report


def _restore_for_eval(config, workdir: str):
  """(model, variables) of the newest checkpoint of ``workdir``."""
  try:  # cure_jax.checkpoint where the package has it, else the train loop's
    from cure_jax.checkpoint import restore_for_eval  # pylint: disable=g-import-not-at-top
  except ImportError:
    from cure_jax.train.loop import restore_for_eval  # pylint: disable=g-import-not-at-top
  return restore_for_eval(config, workdir)


def _test_split(config):
  """The test split of ``config.dataset`` (`load_config_split`)."""
  from cure_jax import data  # pylint: disable=g-import-not-at-top

  load = getattr(data, "load_config_split", None)
  if load is None:
    from cure_jax.train.loop import load_config_split as load  # pylint: disable=g-import-not-at-top
  return load(config, "test")


def _checkpoint_error() -> type[Exception]:
  try:
    from cure_jax.checkpoint import CheckpointRestoreError  # pylint: disable=g-import-not-at-top
  except ImportError:
    from cure_jax.train.checkpoint import CheckpointRestoreError  # pylint: disable=g-import-not-at-top
  return CheckpointRestoreError


def export_checkpoint(
  config,
  workdir: str,
  out_dir: str | None = None,
  *,
  examples: int = 10,
  norms: Sequence[str] = ("linf",),
  eps: float | None = None,
  timeout: float = 60.0,
  tolerance: float = 1e-5,
  log: Callable[[str], Any] | None = print,
) -> dict[str, Any]:
  """Exports the newest checkpoint of ``workdir`` (see the module docstring).

  Raises:
    FileNotFoundError: ``workdir`` has no checkpoint.
    DataNotFoundError: the test split is not available.
    ExportMismatchError, ValueError: see `write_benchmark`.
  """
  from cure_jax import data  # pylint: disable=g-import-not-at-top

  check_norms(norms)
  if examples < 1:
    raise ValueError(f"--examples must be at least 1, got {examples}.")
  model, variables = _restore_for_eval(config, workdir)
  info = data.dataset_info(config.dataset.name)
  test = _test_split(config)
  test = test.take(min(examples, test.num_examples))
  images = data.to_unit_float(test.images)
  if info.eval_crop:
    images = data.center_crop(images, info.eval_crop)
  return write_benchmark(
    model,
    variables,
    np.asarray(images),
    np.asarray(test.labels),
    out_dir or os.path.join(workdir, "vnncomp"),
    eps=float(config.eval.eps_linf if eps is None else eps),
    timeout=timeout,
    tolerance=tolerance,
    norms=norms,
    log=log,
    config=config,
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  workdir = args.workdir
  log_setup.setup(workdir if os.path.isdir(workdir) else None, "export")
  import jax  # pylint: disable=g-import-not-at-top

  from cure_jax.data import DataNotFoundError  # pylint: disable=g-import-not-at-top

  config = cli.run_config(flags.FLAGS["config"], workdir, jax.default_backend())
  try:
    export_checkpoint(
      config,
      workdir,
      args.out_dir,
      examples=args.examples,
      norms=args.norms,
      eps=args.eps,
      timeout=args.timeout,
      tolerance=args.tolerance,
    )
  except (
    FileNotFoundError,
    DataNotFoundError,
    _checkpoint_error(),
    ValueError,
  ) as error:
    print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
