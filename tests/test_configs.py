"""Every config of `configs/` loads, is locked, and carries the spec's values."""

import pathlib

import pytest

from cure_jax import settings
from cure_jax.objectives.registry import METHODS

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
SETTINGS = {
  "mnist": ("small", "large"),
  "cifar10": ("small", "large"),
  "tinyimagenet": ("default",),
}


def load(dataset, arg=""):
  return settings.load_config(f"{CONFIGS / dataset}.py:{arg}")


@pytest.mark.parametrize(
  "dataset, setting", [(d, s) for d, sets in SETTINGS.items() for s in sets]
)
@pytest.mark.parametrize("cpu", [False, True])
def test_every_setting_and_method_loads_locked(dataset, setting, cpu):
  for method in METHODS:
    c = load(dataset, f"setting={setting},method={method},cpu={cpu}")
    assert c.method == method and c.dataset.name == dataset
    assert c.is_locked
    with pytest.raises(AttributeError):
      c.not_a_key = 1
    assert c.model.name == ("small_cnn" if cpu else "cnn7")
    assert 0 < c.eps_linf and 0 < c.lambda_linf <= 1
    assert c.eps_ramp_start <= c.eps_ramp_end <= c.num_epochs
    assert all(m <= c.num_epochs for m in c.lr_milestones)


# Spec §6: ε∞, λ∞, ε2 train, epochs, milestones, ramp end, l1, batch.
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
  settings.apply_overrides(c, {"cure.combine": "joint", "num_epochs": 3})
  assert c.cure.combine == "joint" and c.num_epochs == 3
  with pytest.raises(KeyError, match="valid keys under 'cure'"):
    settings.apply_overrides(c, {"cure.combination": "joint"})
  with pytest.raises(ValueError, match="unknown setting|valid"):
    load("mnist", "setting=medium")
