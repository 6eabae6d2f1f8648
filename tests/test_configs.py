"""Every config of `configs/` loads, is locked, and carries the spec's values.

Also: the table of training methods, config loading without JAX, the
``cpu=auto`` resolution and the run plan `cure_jax.main` prints.
"""

import datetime
import pathlib
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from cure_jax import cli, config_schema, run_plan
from cure_jax.config_schema import TRAINING_METHODS

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SETTINGS = {
  "mnist": ("small", "large"),
  "cifar10": ("small", "large"),
  "tinyimagenet": ("default",),
}


def load(dataset, arg=""):
  return config_schema.load_config(f"{CONFIGS / dataset}.py:{arg}")


@pytest.mark.parametrize(
  "dataset, setting", [(d, s) for d, sets in SETTINGS.items() for s in sets]
)
@pytest.mark.parametrize("cpu", [False, True])
def test_every_setting_and_method_loads_locked(dataset, setting, cpu):
  for method in TRAINING_METHODS:
    c = load(dataset, f"setting={setting},method={method},cpu={cpu}")
    assert c.method == method and c.dataset.name == dataset
    assert c.is_locked
    with pytest.raises(AttributeError):
      c.not_a_key = 1
    assert c.model.name == ("small_cnn" if cpu else "cnn7")
    assert 0 < c.eps_linf and 0 < c.lambda_linf <= 1
    assert c.eps_ramp_start <= c.eps_ramp_end <= c.num_epochs
    assert all(m <= c.num_epochs for m in c.lr_milestones)
    # CROWN's intermediate bounds on the small CNNs; IBP ones on CNN7.
    cascade = c.eval.methods
    if cpu:
      assert tuple(cascade) == config_schema.CPU_CERTIFY_METHODS
      assert c.eval.alpha_steps == 20
    else:
      assert "crown" not in cascade and "alpha_crown" not in cascade
      assert c.eval.alpha_steps == 100  # α,β-CROWN's verifier


# docs/method.md §6 (Settings): ε∞, λ∞, ε2 train, epochs, milestones, ramp end, l1, batch.
@pytest.mark.parametrize(
  "dataset, setting, expected",
  [
    ("mnist", "small", (0.1, 0.4, 0.75, 70, (50, 60), 22, 1e-5, 256)),
    ("mnist", "large", (0.3, 0.6, 1.0, 70, (50, 60), 22, 1e-6, 256)),
    ("cifar10", "small", (2 / 255, 0.1, 0.25, 160, (120, 140), 82, 1e-6, 128)),
    ("cifar10", "large", (8 / 255, 0.7, 0.5, 180, (140, 160), 82, 0.0, 128)),
    (
      "tinyimagenet",
      "default",
      (1 / 255, 0.4, 36 / 255, 180, (140, 160), 82, 1e-6, 128),
    ),
  ],
)
def test_settings_match_the_spec_table(dataset, setting, expected):
  c = load(dataset, f"setting={setting},method=sabr")
  eps, lam, eps_l2, epochs, milestones, ramp_end, l1, batch = expected
  assert (c.eps_linf, c.lambda_linf, c.eps_l2_train, c.l1_reg) == pytest.approx(
    (eps, lam, eps_l2, l1)
  )
  assert (
    c.num_epochs,
    tuple(c.lr_milestones),
    c.eps_ramp_end,
    c.batch_size,
  ) == (epochs, milestones, ramp_end, batch)
  assert c.learning_rate == 5e-4 and c.lambda_l2 == 1e-5 and c.seed == 12


def test_method_specific_values_of_the_spec():
  assert load("mnist", "method=l2").eps_l2_train == 0.5
  assert load("mnist", "setting=large,method=cure_joint").eps_l2_train == 1.5
  assert load("mnist", "setting=large,method=cure_random").eps_l2_train == 1.5
  assert load("mnist", "method=ibp").lambda_linf == 1.0
  scratch = load("mnist", "method=cure_scratch")
  assert (
    scratch.cure.combine,
    scratch.cure.ba_weight,
    scratch.cure.gp_beta,
  ) == ("max", 2.0, 0.8)
  large = load("mnist", "setting=large,method=cure_scratch")
  assert (large.cure.ba_weight, large.cure.gp_beta) == (0.5, 0.8)
  tin = load("tinyimagenet", "method=cure_scratch")
  assert (tin.cure.ba_weight, tin.cure.gp_beta, tin.cure.ba_direction) == (
    2.0,
    0.5,
    "linf_to_l2",
  )
  assert load("mnist", "method=cure_scratch").cure.ba_direction == "l2_to_linf"
  finetune = load("mnist", "method=cure_finetune")
  assert (
    finetune.num_epochs,
    finetune.eps_ramp_end,
    finetune.cure.ba_weight,
    finetune.natural_epochs,
  ) == (14, 4, 0.5, 0)
  assert load("cifar10", "method=cure_finetune").eps_ramp_end == 16
  assert load("mnist", "method=cure_random").cure.combine == "random"
  assert load("mnist", "method=cure_joint").cure.alpha == 0.5


def test_evaluation_radii_of_the_spec():
  small, large = load("mnist"), load("mnist", "setting=large")
  assert (small.eval.eps_linf, small.eval.eps_l2, small.eval.eps_l1) == (
    0.1,
    0.5,
    1.0,
  )
  assert (large.eval.eps_linf, large.eval.eps_l2, large.eval.eps_l1) == (
    0.3,
    1.0,
    2.0,
  )
  cifar = load("cifar10", "setting=large")
  assert (cifar.eval.eps_l2, cifar.eval.eps_l1) == (0.5, 1.0)
  assert tuple(load("tinyimagenet").eval.norms) == ("linf", "l2")


def test_overrides_apply_and_unknown_keys_are_explained():
  c = load("mnist", "cpu=True")
  c.unlock()
  config_schema.apply_overrides(c, {"cure.combine": "joint", "num_epochs": 3})
  assert c.cure.combine == "joint" and c.num_epochs == 3
  with pytest.raises(KeyError, match="valid keys under 'cure'"):
    config_schema.apply_overrides(c, {"cure.combination": "joint"})
  with pytest.raises(ValueError, match="unknown setting|valid"):
    load("mnist", "setting=medium")


def test_unknown_method_argument_and_cpu_value_list_the_valid_ones():
  for dataset in SETTINGS:
    with pytest.raises(ValueError, match="valid methods are .*'cure_max'"):
      load(dataset, "method=cure_maximum")
    with pytest.raises(ValueError, match=r"valid ones are \['cpu', 'method'"):
      load(dataset, "methods=sabr")
    with pytest.raises(ValueError, match="unknown cpu argument 'yes'"):
      load(dataset, "cpu=yes")
    with pytest.raises(ValueError, match="unknown cpu argument 1"):
      load(dataset, "cpu=1")


def test_every_method_record_is_consistent():
  assert list(TRAINING_METHODS) == [m.name for m in TRAINING_METHODS.values()]
  for record in TRAINING_METHODS.values():
    assert record.summary
    assert len(record.step_cost) == len(config_schema.STEP_COST_MODELS)
    assert all(cost >= 1.0 for cost in record.step_cost)
    assert (record.term is None) == (record.name == "natural")
    assert not (record.ibp_only and record.term is None)
  # The presets name keys of the schema (apply_overrides would raise).
  for record in TRAINING_METHODS.values():
    config_schema.apply_overrides(config_schema.base_config(), record.preset)
  assert [m.name for m in TRAINING_METHODS.values() if m.finetune] == [
    "cure_finetune"
  ]
  assert [
    m.name for m in TRAINING_METHODS.values() if m.setting_cure_weights
  ] == ["cure_scratch"]


def test_check_method_returns_the_record_or_lists_the_methods():
  assert config_schema.check_method("sabr") is TRAINING_METHODS["sabr"]
  with pytest.raises(ValueError, match="valid methods are .*'patch_ibp'"):
    config_schema.check_method("pgd")


def test_loading_a_config_does_not_import_jax():
  """In a fresh interpreter: the schema, every config file and a run's
  recorded config (`cure_jax.load` in reach), no JAX."""
  paths = [str(CONFIGS / f"{d}.py") for d in SETTINGS]
  script = (
    "import json, sys, tempfile\n"
    "import cure_jax\n"
    "from cure_jax import config_schema, recorded_config, workdir\n"
    "assert callable(cure_jax.load)\n"
    f"for path in {paths!r}:\n"
    "  for cpu in ('auto', True, False):\n"
    "    config = config_schema.load_config(\n"
    "      f'{path}:cpu={cpu},method=cure_scratch')\n"
    "run = tempfile.mkdtemp()\n"
    "with open(f'{run}/{workdir.CONFIG_FILE}', 'w') as f:\n"
    "  json.dump(config.to_dict(), f)\n"
    "assert recorded_config.get_config(run).method == 'cure_scratch'\n"
    "jax = sorted(m for m in sys.modules if m == 'jax' or m.startswith('jax.'))\n"
    "print('jax modules:', jax)\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", script],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 0, result.stderr
  assert "jax modules: []" in result.stdout


def test_cpu_auto_is_the_papers_setting_marked_for_the_program():
  for dataset in SETTINGS:
    auto, paper = load(dataset), load(dataset, "cpu=False")
    assert auto.auto_cpu and not paper.auto_cpu
    assert not load(dataset, "cpu=True").auto_cpu
    paper.unlock()
    paper.auto_cpu = True
    assert auto.to_dict() == paper.to_dict()
    # The CPU variant has the same keys: overrides carry over.
    assert _dotted_keys(load(dataset, "cpu=True")) == _dotted_keys(auto)


def _dotted_keys(config, prefix=""):
  keys = set()
  for name, value in config.items():
    if isinstance(value, config_schema.ml_collections.ConfigDict):
      keys |= _dotted_keys(value, f"{prefix}{name}.")
    else:
      keys.add(prefix + name)
  return keys


@pytest.mark.parametrize(
  "given, auto_cpu, backend, expected",
  [
    ("configs/mnist.py", True, "cpu", "configs/mnist.py:cpu=True"),
    (
      "configs/mnist.py:method=ibp,cpu=auto,setting=large",
      True,
      "cpu",
      "configs/mnist.py:method=ibp,setting=large,cpu=True",
    ),
    ("configs/mnist.py", True, "gpu", None),
    ("configs/mnist.py", True, "tpu", None),
    ("configs/mnist.py:cpu=False", False, "cpu", None),
    ("configs/mnist.py:cpu=True", False, "cpu", None),
  ],
)
def test_cpu_variant_spec_resolves_auto_only_without_an_accelerator(
  given, auto_cpu, backend, expected
):
  assert config_schema.cpu_variant_spec(given, auto_cpu, backend) == expected


def _parsed_config_flag(argv):
  """``--config`` parsed from ``argv`` into a fresh set of flags."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "config", flag_values=flag_values, sys_argv=argv
  )
  flag_values(argv)
  return flag_values["config"]


def test_the_cpu_variant_keeps_the_command_lines_overrides():
  argv = [
    "prog",
    f"--config={CONFIGS / 'mnist.py'}:method=ibp",
    "--config.num_epochs=2",
    "--config.cure.alpha=0.25",
  ]
  flag = _parsed_config_flag(argv)
  assert flag.value.model.name == "cnn7" and flag.value.auto_cpu
  config, spec = cli.config_for_backend(flag, "cpu")
  assert spec == f"{CONFIGS / 'mnist.py'}:method=ibp,cpu=True"
  assert (config.model.name, config.batch_size, config.pgd_steps) == (
    "small_cnn",
    128,
    4,
  )
  assert (config.num_epochs, config.cure.alpha, config.method) == (
    2,
    0.25,
    "ibp",
  )
  assert config.is_locked and not config.auto_cpu
  same, none = cli.config_for_backend(flag, "gpu")
  assert none is None and same is flag.value and same.num_epochs == 2


def test_default_workdir_is_a_fresh_dated_folder_under_runs():
  now = datetime.datetime(2026, 3, 4, 5, 6, 7)
  assert run_plan.default_workdir("mnist", "sabr", now, lambda _: False) == (
    "runs/mnist-sabr-20260304-050607"
  )
  taken = {
    "runs/mnist-sabr-20260304-050607",
    "runs/mnist-sabr-20260304-050607-2",
  }
  assert (
    run_plan.default_workdir("mnist", "sabr", now, taken.__contains__)
    == "runs/mnist-sabr-20260304-050607-3"
  )


def test_training_steps_count_as_the_loop_does():
  config = load("mnist", "cpu=True")  # 60000 // 128 = 468 steps per epoch
  assert run_plan.training_steps(config, 60_000) == (6 * 468, 468)
  cifar = load("cifar10", "cpu=True")  # a 2048-example subset
  assert run_plan.training_steps(cifar, 50_000) == (6 * 16, 16)


def test_steps_and_estimate_count_the_examples_trained_on():
  config = load("mnist", "cpu=True,method=sabr")
  full = run_plan.estimate_training_seconds(config, 60_000, (28, 28, 1), "cpu")
  config.dataset.train_examples = 2000  # 2000 // 128 = 15 steps per epoch
  assert run_plan.training_steps(config, 60_000) == (6 * 15, 15)
  subset = run_plan.estimate_training_seconds(
    config, 60_000, (28, 28, 1), "cpu"
  )
  assert subset == pytest.approx(full * 15 / 468)
  lines = _start_lines(config)
  assert any("(90 steps;" in line for line in lines)


def test_estimate_scales_the_natural_step_by_the_methods_cost():
  config = load("mnist", "cpu=True,method=sabr")
  seconds = run_plan.estimate_training_seconds(
    config, 60_000, (28, 28, 1), "cpu"
  )
  natural = run_plan.NATURAL_STEP_SECONDS["small_cnn"]
  sabr = TRAINING_METHODS["sabr"].step_cost[0]
  assert seconds == pytest.approx(natural * (468 + sabr * 5 * 468))
  paper = load("mnist", "cpu=False,method=sabr")  # CNN7, batch 256, 70 epochs
  long = run_plan.estimate_training_seconds(paper, 60_000, (28, 28, 1), "cpu")
  cnn7 = run_plan.NATURAL_STEP_SECONDS["cnn7"] * 2
  sabr7 = TRAINING_METHODS["sabr"].step_cost[1]
  assert long == pytest.approx(cnn7 * (234 + sabr7 * 69 * 234))
  assert (
    run_plan.estimate_training_seconds(paper, 60_000, (28, 28, 1), "gpu")
    is None
  )


def _start_lines(
  config, backend="cpu", cpu_variant=False, arg="configs/mnist.py"
):
  return run_plan.start_lines(
    config=config,
    config_arg=arg,
    backend=backend,
    device_kinds=["cpu"] if backend == "cpu" else ["H100", "H100"],
    workdir="runs/x",
    cpu_variant=cpu_variant,
    num_train=60_000,
    input_shape=(28, 28, 1),
  )


def test_start_lines_say_what_the_run_does():
  lines = _start_lines(load("mnist", "cpu=True"), cpu_variant=True)
  assert lines[0] == "JAX backend cpu, devices: 1 × cpu."
  assert (
    "CPU variant" in lines[1]
    and "--config=configs/mnist.py:cpu=False" in lines[1]
  )
  assert lines[2] == "Run folder: runs/x"
  assert lines[3].startswith("Estimated training time: about ")
  assert len(lines) == 4  # minutes: no warning
  gpu = _start_lines(load("mnist", "cpu=False"), backend="gpu")
  assert gpu[0] == "JAX backend gpu, devices: 2 × H100."
  assert gpu[-1].startswith("Estimated training time: unknown (16380 steps;")
  assert not any("Warning" in line for line in gpu)


def test_an_explicit_paper_run_on_a_cpu_warns_with_its_estimate():
  lines = _start_lines(
    load("mnist", "cpu=False"), arg="configs/mnist.py:cpu=False"
  )
  assert lines[-1].startswith("Warning: this run is estimated at ")
  assert " h on this CPU" in lines[-1]
  assert "--config=configs/mnist.py:cpu=True" in lines[-1]
