"""Tests for launch/tpu_pod.sh and launch/slurm.sbatch with stand-in tools.

`gcloud` and `srun` are replaced by small scripts on PATH that record their
arguments and run the remote command locally, so the tests check what the
launch scripts would execute on a TPU slice or a SLURM allocation.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU_POD = REPO / "launch" / "tpu_pod.sh"
SLURM = REPO / "launch" / "slurm.sbatch"

# Records argv as JSON; `scp FILE pod:~/NAME` copies FILE to $HOME/NAME and
# `ssh --command=C` runs C with bash, as one worker whose home is $HOME.
FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ['FAKE_LOG'], 'a') as log:
  log.write(json.dumps(args) + '\\n')
if args[3] == 'scp':
  shutil.copy(args[4], os.path.join(os.environ['HOME'],
                                    args[5].split(':~/')[1]))
for arg in args:
  if arg.startswith('--command='):
    sys.exit(subprocess.call(['bash', '-c', arg[len('--command='):]]))
"""
# Prints its argv and JAX_LOCAL_DEVICE_IDS as JSON, then runs the command.
FAKE_SRUN = f"""#!{sys.executable}
import json, os, subprocess, sys
print(json.dumps({{'argv': sys.argv[1:],
                  'ids': os.environ.get('JAX_LOCAL_DEVICE_IDS')}}))
sys.exit(subprocess.call([a for a in sys.argv[1:] if not a.startswith('--')]))
"""


def _install(directory: pathlib.Path, name: str, source: str) -> None:
  path = directory / name
  path.write_text(source)
  path.chmod(0o755)


@pytest.fixture
def env(tmp_path):
  """An environment whose PATH starts with the stand-in tools."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _install(bin_dir, "gcloud", FAKE_GCLOUD)
  _install(bin_dir, "srun", FAKE_SRUN)
  keep = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("SLURM_", "CURE_", "TPU_", "JAX_LOCAL"))
  }
  return dict(
    keep,
    PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    HOME=str(tmp_path),
    FAKE_LOG=str(tmp_path / "gcloud.log"),
  )


def _gcloud_calls(env):
  with open(env["FAKE_LOG"]) as log:
    return [json.loads(line) for line in log]


def _run(command, env, **env_updates):
  return subprocess.run(
    [str(c) for c in command],
    env=dict(env, **env_updates),
    capture_output=True,
    text=True,
    timeout=30,
    check=False,
  )


@pytest.mark.parametrize(
  "accelerator, runtime",
  [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-64", "v2-alpha-tpuv5"),
    ("v6e-16", "v2-alpha-tpuv6e"),
  ],
)
def test_tpu_create_picks_runtime_for_generation(env, accelerator, runtime):
  proc = _run(
    [TPU_POD, "create"],
    env,
    TPU_NAME="pod",
    ZONE="z",
    ACCELERATOR_TYPE=accelerator,
    PROJECT="p",
  )
  assert proc.returncode == 0, proc.stderr
  assert _gcloud_calls(env) == [
    [
      "compute",
      "tpus",
      "tpu-vm",
      "create",
      "pod",
      "--zone=z",
      "--project=p",
      f"--accelerator-type={accelerator}",
      f"--version={runtime}",
    ]
  ]


def test_tpu_run_on_all_workers_with_auto_detection_and_exact_args(
  env, tmp_path
):
  (tmp_path / "cure_jax").mkdir()  # The remote checkout, here under HOME.
  script = 'import os, sys; print(os.environ["CURE_DISTRIBUTED"], sys.argv[1:])'
  proc = _run(
    [TPU_POD, "run", sys.executable, "-c", script, "a b", "$HOME"],
    env,
    TPU_NAME="pod",
    ZONE="z",
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "auto ['a b', '$HOME']"
  (call,) = _gcloud_calls(env)
  assert call[:6] == ["compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=z"]
  assert "--worker=all" in call


def test_tpu_copy_ships_the_working_tree(env, tmp_path):
  if shutil.which("git") is None:
    pytest.skip("git is not installed")
  proc = _run([TPU_POD, "copy"], env, TPU_NAME="pod", ZONE="z")
  assert proc.returncode == 0, proc.stderr
  shipped = tmp_path / "cure_jax"
  assert (shipped / "launch" / "tpu_pod.sh").is_file()
  assert (shipped / "cure_jax" / "parallel" / "mesh.py").is_file()
  assert not (shipped / ".git").exists()
  assert not (tmp_path / "cure_jax.tar.gz").exists()  # Unpacked, removed.
  assert [call[3] for call in _gcloud_calls(env)] == ["scp", "ssh"]


@pytest.mark.parametrize(
  "argv, env_updates, message",
  [
    ([], {}, "Runs a command on every worker"),
    (["run", "ls"], {"TPU_NAME": "pod"}, "set ZONE"),
    (["create"], {"TPU_NAME": "pod", "ZONE": "z"}, "set ACCELERATOR_TYPE"),
    (["run"], {"TPU_NAME": "pod", "ZONE": "z"}, "Runs a command"),
    (["reboot"], {"TPU_NAME": "pod", "ZONE": "z"}, "Runs a command"),
  ],
)
def test_tpu_script_explains_misuse(env, argv, env_updates, message):
  proc = _run([TPU_POD, *argv], env, **env_updates)
  assert proc.returncode == 2 and message in proc.stderr
  assert not os.path.exists(env["FAKE_LOG"])  # Nothing was started.


SLURM_ENV = {
  "SLURM_JOB_ID": "77",
  "SLURM_NTASKS": "16",
  "SLURM_JOB_NUM_NODES": "2",
  "SLURM_GPUS_ON_NODE": "8",
}


def _srun_report(proc):
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout.splitlines()[1])


def test_slurm_one_task_per_gpu_leaves_device_choice_to_jax(env):
  proc = _run(
    ["bash", SLURM, sys.executable, "-c", 'print("ran")'],
    env,
    SLURM_NTASKS_PER_NODE="8",
    **SLURM_ENV,
  )
  report = _srun_report(proc)
  assert report["argv"] == [
    "--kill-on-bad-exit=1",
    sys.executable,
    "-c",
    'print("ran")',
  ]
  assert report["ids"] is None and proc.stdout.splitlines()[-1] == "ran"


def test_slurm_one_task_per_node_gets_all_gpus_of_the_node(env):
  proc = _run(["bash", SLURM, "true"], env, **dict(SLURM_ENV, SLURM_NTASKS="2"))
  assert _srun_report(proc)["ids"] == "0,1,2,3,4,5,6,7"


def test_slurm_script_needs_a_command(env):
  proc = _run(["bash", SLURM], env, **SLURM_ENV)
  assert proc.returncode == 2 and "usage: sbatch" in proc.stderr
