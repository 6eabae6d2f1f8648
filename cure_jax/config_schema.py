"""The config schema: every key a run reads, the training methods, config files.

Config files in ``configs/`` are plain Python (big_vision style):
``get_config(arg)`` parses ``arg`` ("setting=large,method=sabr,cpu=True"),
starts from `base_config`, applies the dataset's setting row and the
method's preset, and returns a locked `ml_collections.ConfigDict`, so a
mistyped ``--config.key=value`` override fails and lists the valid keys.

This module imports only ml_collections and the standard library: loading a
config never starts JAX (``--help`` and config errors answer at once, and
the program may choose its devices after reading the config).
"""

import ast
import difflib
import importlib.util
from typing import Any, NamedTuple

import ml_collections

# (mean, std) per channel of the reference code (SABR / CURE), applied inside
# the model (docs/method.md §5); MNIST is used unnormalized there.
INPUT_NORMALIZATION: dict[
  str, tuple[tuple[float, ...], tuple[float, ...]] | None
] = {
  "mnist": None,
  "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
  "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}


class TrainingMethod(NamedTuple):
  """One training method (``config.method``; docs/method.md §3 and §6).

  Attributes:
    name: the value of ``config.method``.
    summary: what it trains against, in one line.
    preset: config changes it makes, dotted keys (``{"cure.combine": "max"}``).
    term: the kind of robust term the objective computes (a key of
      `cure_jax.objectives.objective.ROBUST_TERMS`), None for none.
    ibp_only: every bounded pass of the term is IBP, so
      ``bn_moments='midpoint'`` applies.
    setting_cure_weights: takes the bound-alignment and gradient-projection
      weights of the setting's row (CURE-Scratch).
    finetune: a short schedule from a trained l∞ model
      (``config.finetune_from``).
    step_cost: seconds of a training step after the ε ramp over a natural
      step's, batch 128, MNIST-shaped input, for the models of
      `STEP_COST_MODELS`: the small CNN with the CPU variants' 4 PGD steps,
      CNN7 with the paper's 8. Timed by ``python -m
      cure_jax.benchmarks.train_step`` on a 2-core CPU shared with other
      jobs (ratios move by ±30% there): the small CNN by ``--models=small_cnn
      --methods=natural,sabr/pgd_steps=4,...`` (every PGD method with
      ``/pgd_steps=4``; ibp from README, Performance; crown_ibp and
      patch_ibp, which take no PGD steps, by ``--methods=natural,crown_ibp,
      pgd_linf,pgd_l2,l2,cure_joint,cure_random,cure_finetune,patch_ibp``);
      CNN7 for ibp, sabr, cure_max and cure_scratch in README, Performance,
      and for the others the small CNN's ratio at 8 PGD steps from that
      second command stands in. Used only to estimate a run's length.
  """

  name: str
  summary: str
  preset: dict[str, Any]
  term: str | None
  ibp_only: bool
  setting_cure_weights: bool = False
  finetune: bool = False
  step_cost: tuple[float, float] = (1.0, 1.0)


# The models `TrainingMethod.step_cost` lists, in its order.
STEP_COST_MODELS = ("small_cnn", "cnn7")
_MAX = {"cure.combine": "max"}
TRAINING_METHODS: dict[str, TrainingMethod] = {
  m.name: m
  for m in (
    TrainingMethod(
      "natural", "clean cross-entropy only", dict(warmup_reg=False), None, False
    ),
    TrainingMethod(
      "ibp",
      "IBP over B∞(x, ε∞) (Gowal et al., 2018)",
      dict(lambda_linf=1.0),
      "ibp",
      True,
      step_cost=(2.49, 2.72),
    ),
    TrainingMethod(
      "sabr",
      "SABR small boxes, l∞ (Müller et al., 2023)",
      {},
      "sabr",
      True,
      step_cost=(5.43, 5.9),
    ),
    TrainingMethod(
      "crown_ibp",
      "CROWN-IBP over B∞(x, ε∞) (Zhang et al., 2020)",
      {},
      "crown_ibp",
      False,
      step_cost=(17.7, 17.7),
    ),
    TrainingMethod(
      "pgd_linf",
      "PGD adversarial training, l∞ (Madry et al., 2018)",
      dict(warmup_reg=False),
      "pgd_linf",
      False,
      step_cost=(4.33, 6.84),
    ),
    TrainingMethod(
      "pgd_l2",
      "PGD adversarial training, l2",
      dict(warmup_reg=False),
      "pgd_l2",
      False,
      step_cost=(5.65, 6.16),
    ),
    TrainingMethod(
      "l2",
      "the l2 certified loss (config.l2_variant)",
      {},
      "l2",
      True,
      step_cost=(7.74, 7.29),
    ),
    TrainingMethod(
      "l1",
      "the certified l1 loss (config.l1_variant)",
      {},
      "l1",
      False,
      step_cost=(17.7, 17.7),
    ),
    TrainingMethod(
      "cure_joint",
      "CURE-Joint: (1 − α)·L∞ + α·L2",
      {"cure.combine": "joint"},
      "cure",
      True,
      step_cost=(12.9, 14.9),
    ),
    TrainingMethod(
      "cure_max",
      "CURE-Max: mean max(L∞, L2)",
      _MAX,
      "cure",
      True,
      step_cost=(15.4, 12.0),
    ),
    TrainingMethod(
      "cure_random",
      "CURE-Random: L∞ on one half of the batch, L2 on the other",
      {"cure.combine": "random"},
      "cure",
      True,
      step_cost=(6.37, 6.34),
    ),
    TrainingMethod(
      "cure_scratch",
      "CURE-Scratch: Max + bound alignment + gradient projection",
      _MAX,
      "cure",
      True,
      setting_cure_weights=True,
      step_cost=(12.7, 11.6),
    ),
    TrainingMethod(
      "cure_finetune",
      "CURE-Finetune: Max + bound alignment from an l∞ model",
      _MAX,
      "cure",
      True,
      finetune=True,
      step_cost=(10.2, 15.1),
    ),
    TrainingMethod(
      "patch_ibp",
      "IBP over sampled p×p patch positions (Chiang et al., 2020)",
      dict(warmup_reg=False),  # the regularizers are l∞ ones
      "patch",
      False,
      step_cost=(12.5, 12.5),
    ),
  )
}


def _row(table: dict, name: str, kind: str, valid: list):
  """``table[name]``; an unknown name raises a ValueError listing ``valid``."""
  if name not in table:
    raise ValueError(f"unknown {kind} {name!r}; valid {kind}s are {valid}.")
  return table[name]


def check_method(method: str) -> TrainingMethod:
  """The record of ``method``.

  Raises:
    ValueError: an unknown method; the message lists the valid ones.
  """
  return _row(TRAINING_METHODS, method, "method", list(TRAINING_METHODS))


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "k1=v1,k2=v2" into a ConfigDict over ``defaults``.

  Values are Python literals where they parse as such (``cpu=True``,
  ``epochs=3``), strings otherwise; a value may change type (``cpu`` is
  "auto" or a bool).

  Raises:
    ValueError: an unknown key; the message lists the known ones.
  """
  result = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(
        f"unknown config argument {key!r}; valid ones are {sorted(defaults)}."
      )
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    result[key] = value
  return ml_collections.ConfigDict(result)


# The ``cpu`` argument of a config file: its CPU variant (True), the paper's
# setting (False), or the CPU variant exactly when JAX finds no accelerator.
AUTO = "auto"


def check_cpu_argument(cpu) -> bool:
  """Whether the ``cpu`` argument leaves the choice to the program ("auto").

  Raises:
    ValueError: ``cpu`` is not True, False or "auto".
  """
  if not (cpu is True or cpu is False or cpu == AUTO):
    raise ValueError(
      f"unknown cpu argument {cpu!r}; valid ones are True (the CPU variant), "
      f"False (the paper's setting) and {AUTO!r} (the CPU variant where no "
      "accelerator is found)."
    )
  return cpu == AUTO


def cpu_variant_spec(
  path_and_arg: str, auto_cpu: bool, backend: str
) -> str | None:
  """The ``--config`` value to load instead of ``path_and_arg``, or None.

  A config file loaded with ``cpu=auto`` (its default) gives the paper's
  setting and ``auto_cpu=True``; once JAX is up, a run with no accelerator
  (``backend == "cpu"``) takes the file's CPU variant instead: the same
  argument with ``cpu=True``.

  Args:
    path_and_arg: the ``--config`` value, e.g. "configs/mnist.py:method=ibp".
    auto_cpu: the loaded config's ``auto_cpu``.
    backend: ``jax.default_backend()`` ("cpu", "gpu", "tpu").

  Returns:
    e.g. "configs/mnist.py:method=ibp,cpu=True", or None: keep the config.
  """
  if not auto_cpu or backend != "cpu":
    return None
  return with_cpu_argument(path_and_arg, True)


def with_cpu_argument(path_and_arg: str, cpu: bool) -> str:
  """``path_and_arg`` with ``cpu=<cpu>`` in place of any ``cpu`` argument.

  E.g. ("configs/mnist.py:cpu=auto,method=ibp", False) ->
  "configs/mnist.py:method=ibp,cpu=False".
  """
  path, _, arg = path_and_arg.partition(":")
  items = [i for i in arg.split(",") if i and i.partition("=")[0] != "cpu"]
  return f"{path}:{','.join([*items, f'cpu={cpu}'])}"


def base_config() -> ml_collections.ConfigDict:
  """Every key a run reads, with the reference defaults (docs/method.md §3–§4)."""
  c = ml_collections.ConfigDict()
  c.seed = 12
  c.method = "sabr"
  # The config file's ``cpu`` argument was "auto": the paper's setting, which
  # the program swaps for the CPU variant when JAX finds no accelerator
  # (`cpu_variant_spec`).
  c.auto_cpu = False

  c.dataset = ml_collections.ConfigDict(
    dict(
      name="mnist",
      data_dir="",  # local dir with the original files ("" = env/online)
      tfds_data_dir="",  # prepared datasets ("" = $TFDS_DATA_DIR, else
      # ~/tensorflow_datasets)
      download=True,  # may fetch the original files when none is local
      train_examples=0,  # 0 = the whole training split, else a fixed
      # random subset of this size
    )
  )  # augmentation and test-time crop: the dataset's reference ones
  c.model = ml_collections.ConfigDict(dict(name="cnn7", num_classes=10))
  c.init = "ibp"  # ibp (Shi et al., 2021) | default

  # Threat models: training radii and small-box sizes (docs/method.md §2, §6).
  c.eps_linf = 0.1
  c.lambda_linf = 0.4
  c.eps_l2_train = 0.75
  c.lambda_l2 = 1e-5
  c.l2_variant = "sabr_box"  # sabr_box (reference) | certified (ours)
  # l1 (beyond the paper, docs/method.md §10): the training radius, the
  # certified variant's ball fraction, and which certified l1 loss.
  c.eps_l1_train = 1.0
  c.lambda_l1 = 0.1
  c.l1_variant = "crown_ibp"  # crown_ibp (whole ball) | certified (small ball)
  # The norms CURE's terms combine: the paper's two, or ("linf", "l2", "l1").
  c.train_norms = ("linf", "l2")
  c.pgd_steps = 8
  c.pgd_step_fraction = 0.25  # PGD training baselines: step = fraction·ε

  c.cure = ml_collections.ConfigDict(
    dict(
      combine="max",  # joint | max | random
      alpha=0.5,  # Joint weight of the l2 loss (two norms)
      weights=(),  # Joint weights per train norm over N norms (() = uniform)
      ba_weight=0.0,  # bound alignment λ_BA (0 = off)
      ba_direction="l2_to_linf",  # l2_to_linf (MNIST) | linf_to_l2
      ba_stop_gradient=False,
      gp_beta=0.0,  # gradient projection β (0 = off)
      gp_interval_steps=0,  # 0 = one epoch
    )
  )
  c.finetune_from = ""  # workdir of an l∞ model to start from
  # Certified patch training (method patch_ibp, Chiang et al., 2020).
  c.patch = ml_collections.ConfigDict(
    dict(
      size=2,  # p×p patches
      train_positions=4,  # positions sampled per example (worst one)
    )
  )

  # Optimization and schedules (docs/method.md §4).
  c.batch_size = 128
  c.num_epochs = 70
  c.learning_rate = 5e-4
  c.lr_milestones = (50, 60)  # epochs
  c.lr_decay = 0.2
  c.grad_clip_norm = 10.0
  c.natural_epochs = 1  # κ = 1 (clean CE only) for these epochs
  c.eps_ramp_start = 1  # epoch
  c.eps_ramp_end = 22  # epoch
  c.l1_reg = 0.0
  c.warmup_reg = True
  c.warmup_reg_weight = 0.5
  # Gradients through the clean batch's BatchNorm moments into the bounded
  # pass. True is the reference (its moments are not detached); False treats
  # them as constants, so after the natural epochs (κ = 0) the clean pass
  # needs no backward pass: IBP steps 1.6× natural instead of 2.8× on CNN7,
  # but the MNIST CPU SABR job then ends at 81.6% clean / 56.2% certified
  # instead of 98.1% / 95.2% (README, Performance).
  c.bn_moment_gradients = True
  # Which BatchNorm moments the bounded pass uses once κ = 0 (README,
  # Performance). "clean": the clean batch's, from a clean forward pass (the
  # reference, docs/method.md §2; 2.5-2.9x natural per IBP step on this CPU).
  # "midpoint": the moments of the midpoints of each BatchNorm's bounded
  # input, with no clean pass (auto_LiRPA's IBP without a forward pass; IBP
  # 1.8-1.9x natural; the MNIST CPU SABR job ends at 98.1% / 94.8%, as with
  # "clean"; with no clean pass, training logs no clean accuracy after the
  # natural epochs); for methods whose bounded passes are all IBP.
  c.bn_moments = "clean"
  # With "clean": the number of clean examples whose moments stand for the
  # batch's (ghost statistics, `objectives.base.moment_subset`); 0 = all of
  # them, the reference. 16 makes IBP 1.7-2.1x natural but cost the MNIST
  # CPU SABR job 0.4 points of clean accuracy (97.7% / 94.7%).
  c.bn_moment_examples = 0

  c.checkpoint_every_steps = 1000
  # Also a checkpoint once this much wall time has passed since the last one
  # (checked every log_every_steps steps; 0 = off).
  c.checkpoint_every_minutes = 10.0
  c.keep_checkpoints = 3
  c.log_every_steps = 50
  c.mixed_precision = False  # bfloat16 compute on accelerators

  # Evaluation at the end of training (and by `python -m cure_jax.certify`).
  c.eval = ml_collections.ConfigDict(
    dict(
      batch_size=500,  # final evaluation (IBP, CROWN-IBP)
      certify_batch_size=100,  # python -m cure_jax.certify (CROWN's memory
      # grows with batch × hidden units × inputs)
      final_examples=0,  # test points for the final eval (0 = all)
      final_methods=("ibp", "crown_ibp"),
      certify_examples=1000,  # the paper's first 1000 test points
      # The certification cascade. CROWN's intermediate bounds need one
      # backward pass per hidden unit: affordable on small CNNs, not CNN7.
      methods=("ibp", "crown_ibp", "alpha_crown_ibp"),
      # α-CROWN's optimization as in α,β-CROWN's incomplete verifier: 100
      # Adam steps, lr 0.1 decayed by 0.98 per step, early stop once every
      # margin is proved (the CPU variants take 20: below).
      alpha_steps=100,
      memory_budget_gb=0.0,  # GiB per bound stage (0 = half the free memory)
      bab_seconds=0.0,  # β-CROWN branch and bound per open point (0 = off)
      attack_first=True,  # bound no point PGD broke (same certificates)
      eps_linf=0.1,
      eps_l2=0.5,
      eps_l1=1.0,
      norms=("linf", "l2", "l1"),
      pgd_steps=50,
      pgd_restarts=1,
      # python -m cure_jax.certify.beyond_lp: patches and geometry.
      beyond_lp=ml_collections.ConfigDict(
        dict(
          examples=500,  # the first test points
          methods=("ibp", "crown_ibp"),  # cascade per region
          rows_per_batch=512,  # (point, region) rows per bounded chunk
          patch_sizes=(2, 5),
          patch_attack_steps=10,  # PGD steps per position (uncertified pts)
          families=(
            "rotation",
            "translation",
            "scaling",
            "shearing",
            "brightness_contrast",
            "combined",
          ),
          ranges=ml_collections.ConfigDict(
            dict(  # ± magnitudes
              rotation=15.0,
              translation=2.0,
              scaling=0.1,
              shearing=0.1,
              brightness=0.1,
              contrast=0.1,
            )
          ),
          # Pieces per parameter of a family's box (k parameters: pieces^k
          # sub-boxes) and values per parameter of the attack's grid.
          subintervals=ml_collections.ConfigDict(
            dict(
              rotation=30,
              translation=8,
              scaling=20,
              shearing=20,
              brightness_contrast=4,
              combined=2,
            )
          ),
          grid_points=ml_collections.ConfigDict(
            dict(
              rotation=61,
              translation=17,
              scaling=41,
              shearing=41,
              brightness_contrast=9,
              combined=3,
            )
          ),
        )
      ),
    )
  )
  return c


def apply_method(
  c: ml_collections.ConfigDict,
  method: str,
  row: dict[str, Any],
  finetune_schedule,
) -> None:
  """Applies the method's preset and, where it takes them, the setting's CURE weights.

  Args:
    c: the config being built.
    method: a name in `TRAINING_METHODS`.
    row: the setting's row (``ba_weight``, ``gp_beta`` of CURE-Scratch).
    finetune_schedule: CURE-Finetune's (epochs, LR milestones, ramp end), a
      short schedule from a pre-trained l∞ model (docs/method.md §6).
  """
  record = check_method(method)
  apply_overrides(c, record.preset)
  if record.setting_cure_weights:
    c.cure.ba_weight, c.cure.gp_beta = row["ba_weight"], row["gp_beta"]
  if record.finetune:
    c.cure.ba_weight = 0.5
    c.num_epochs, c.lr_milestones, c.eps_ramp_end = finetune_schedule
    c.natural_epochs, c.eps_ramp_start = 0, 0
    c.init = "default"


# The CPU variants' certification cascade: on their small CNNs CROWN's
# intermediate bounds are affordable (convolutions through windows), and a
# CROWN stage before all-layer α-CROWN leaves it only the hardest points
# (docs/results.md: on the three-norm MNIST models it lifts l2 certificates
# and the union by ~10 points).
CPU_CERTIFY_METHODS = ("ibp", "crown_ibp", "crown", "alpha_crown")


def apply_cpu_schedule(c: ml_collections.ConfigDict, method: str) -> None:
  """The CPU variants' short schedule (6 epochs; 2 to fine-tune) and their
  certification cascade (`CPU_CERTIFY_METHODS`, α-CROWN with 20 steps:
  α-CROWN is nearly all of a CPU certification's bounding time, and the
  paper's 100 steps would take up to five times as long)."""
  c.eval.methods = CPU_CERTIFY_METHODS
  c.eval.alpha_steps = 20
  c.batch_size = 128
  c.num_epochs, c.lr_milestones = 6, (4, 5)
  c.eps_ramp_start, c.eps_ramp_end = 1, 3
  c.pgd_steps = 4
  if check_method(method).finetune:
    c.num_epochs, c.lr_milestones = 2, (1,)
    c.eps_ramp_start, c.eps_ramp_end = 0, 1


def unknown_key_message(
  config: ml_collections.ConfigDict, dotted: str
) -> str | None:
  """Why the dotted key (e.g. "cure.gp_beta") is not in ``config``, or None.

  Args:
    config: a config.
    dotted: a key path, as in ``--config.<dotted>=value``.

  Returns:
    None when the key exists; otherwise a message naming the first missing
    part, the valid keys at that level and the closest one.
  """
  node, parents = config, []
  for name in dotted.split("."):
    where = ".".join(parents)
    if not isinstance(node, ml_collections.ConfigDict):
      return (
        f"unknown config key {dotted!r}: {where!r} is a value, not a "
        "group of keys."
      )
    if name not in node:
      valid = sorted(node.keys())
      close = difflib.get_close_matches(name, valid, n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      level = f"under {where!r}" if where else "at the top level"
      return (
        f"unknown config key {dotted!r}; valid keys {level} are {valid}.{hint}"
      )
    node, parents = node[name], parents + [name]
  return None


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: dict[str, Any]
) -> None:
  """Sets dotted keys, e.g. {"cure.combine": "joint"}; unknown keys raise.

  Raises:
    KeyError: a key the config lacks (`unknown_key_message` says which).
  """
  for dotted, value in overrides.items():
    message = unknown_key_message(config, dotted)
    if message:
      raise KeyError(message)
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value


def setting_row(
  rows: dict[str, dict[str, Any]], setting: str
) -> dict[str, Any]:
  """The row of ``setting`` in a config file's table of settings (docs/method.md §6).

  Args:
    rows: setting name -> that setting's values.
    setting: the ``setting=...`` argument of the config.

  Returns:
    ``rows[setting]``.

  Raises:
    ValueError: an unknown setting; the message lists the valid ones.
  """
  return _row(rows, setting, "setting", sorted(rows))


def load_config(
  path_and_arg: str, overrides: dict[str, Any] | None = None
) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file, e.g. "configs/mnist.py:cpu=True".

  The programmatic twin of ``--config=... --config.<key>=...`` (for scripts,
  benchmarks, tests).

  Args:
    path_and_arg: a config file and, after a colon, its argument.
    overrides: dotted keys to set afterwards (`apply_overrides`).

  Raises:
    FileNotFoundError: no file at the path.
    KeyError: an override names a key the config lacks.
  """
  path, _, arg = path_and_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_cure_config", path)
  if spec is None:
    raise FileNotFoundError(f"no config file at {path!r}.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  apply_overrides(config, overrides or {})
  return config
