"""The ``cure_jax.main`` command as the design card writes it, and the scripts.

``python -m cure_jax.main --config=configs/mnist.py`` on a machine without an
accelerator runs the CPU variant into a fresh ``runs/`` folder and says so;
here on tiny MNIST files and an MLP, so that it takes seconds.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

from cure_jax.data import fake_sources

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_CONFIG = str(REPO / "configs" / "mnist.py")


def _run(args, cwd, timeout=300):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  for var in ("CURE_DATA_DIR", "CURE_MNIST_DIR", "TFDS_DATA_DIR"):
    env.pop(var, None)
  env["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
  )
  return subprocess.run(
    [sys.executable, *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
  )


def log_messages(stderr: str) -> list[str]:
  """The messages of the absl log lines (``I1205 18:19:25.9 1 main.py:94] ...``)."""
  return [
    line.split("] ", 1)[1]
    for line in stderr.splitlines()
    if re.match(r"[IWEF]\d{4} ", line) and "] " in line
  ]


def test_the_design_card_command_runs_the_cpu_variant_into_runs(tmp_path):
  files = tmp_path / "mnist_files"
  fake_sources.write_fake_mnist(files, num_train=48, num_test=20, seed=3)
  result = _run(
    [
      "-m",
      "cure_jax.main",
      f"--config={MNIST_CONFIG}",
      f"--config.dataset.data_dir={files}",
      f"--config.dataset.tfds_data_dir={tmp_path / 'tfds'}",
      "--config.dataset.download=False",
      "--config.model.name=mlp",
      "--config.batch_size=16",
      "--config.num_epochs=2",
      "--config.pgd_steps=2",
      "--config.eval.final_methods=('ibp',)",
    ],
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = log_messages(result.stderr)
  assert lines[0].startswith("JAX backend cpu, devices: ")
  notice = [line for line in lines if line.startswith("No accelerator")]
  assert len(notice) == 1
  assert f"--config={MNIST_CONFIG}:cpu=False" in notice[0]
  assert "(mlp, 2 epochs" in notice[0]  # the overrides reach the CPU variant
  folder = [line for line in lines if line.startswith("Run folder: ")]
  assert len(folder) == 1
  workdir = tmp_path / folder[0].removeprefix("Run folder: ")
  assert workdir.parent == tmp_path / "runs"
  assert workdir.name.startswith("mnist-sabr-")
  results = json.loads((workdir / "results.json").read_text())
  # The CPU variant's schedule (ε ramp to epoch 3) with the overrides on top.
  assert results["method"] == "sabr" and results["steps"] == 6
  assert any(line.startswith("Estimated training time: ") for line in lines)
  # The run folder describes itself and holds the log.
  assert json.loads((workdir / "config.json").read_text())["method"] == "sabr"
  assert json.loads((workdir / "run.json").read_text())["backend"] == "cpu"
  log = (workdir / "train.log").read_text()
  assert "Run folder: " in log and "[step 6] " in log


@pytest.mark.parametrize(
  "module", ["cure_jax.main", "cure_jax.certify.__main__"]
)
def test_scripts_are_declared_and_parse_their_flags(module, tmp_path):
  scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
    "scripts"
  ]
  assert f"{module}:run" in scripts.values()
  result = _run(
    [
      "-c",
      f"import sys; from {module} import run; sys.argv = ['script', "
      "f'--config={sys.argv[1]}:cpu=True', '--config.cure.gp_betta=0.5']; "
      "run()",
      MNIST_CONFIG,
    ],
    cwd=tmp_path,
    timeout=120,
  )
  assert result.returncode != 0
  assert "unknown config key 'cure.gp_betta'" in result.stderr
  assert "Traceback" not in result.stderr
