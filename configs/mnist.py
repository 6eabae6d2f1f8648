r"""MNIST: every setting × method of the CURE paper (docs/method.md §6), and CPU variants.

Run (writes into a fresh folder runs/mnist-sabr-<date-time>):

  python -m cure_jax.main --config=configs/mnist.py

With an accelerator this is the paper's setting "small" (CNN7, ε∞ = 0.1; on
one GPU an estimated hour for SABR, not measured); with none (JAX's CPU
backend) it is the CPU variant below, and says so: ``cpu=auto``, the default.
``cpu=False`` forces the paper's setting, ``cpu=True`` the CPU variant:

  python -m cure_jax.main --config=configs/mnist.py:setting=small,method=sabr,cpu=False \
      --workdir=/tmp/mnist_sabr

CPU variant (the small CNN, a short schedule; measured on 2 cores: SABR
5 min 44 s for the whole job, CURE-Max and CURE-Scratch 13–16 min):

  python -m cure_jax.main --config=configs/mnist.py:cpu=True,method=ibp \
      --workdir=/tmp/mnist_cpu

Without the clean forward pass (BatchNorm moments of the bounded pass's
midpoints; IBP steps 1.8-1.9x natural instead of 2.5-2.9x; SABR measured at
98.10% clean / 94.82% certified, 5 min 24 s, against 98.04% / 94.90% with
the default): add --config.bn_moments=midpoint.

Arguments (after the colon): setting=small|large, method=<see
cure_jax/config_schema.py>, cpu=auto|True|False. Any key can be overridden
with --config.<key>=<value>, e.g. --config.num_epochs=5.
"""

import ml_collections

from cure_jax import config_schema

SETTINGS = {
  # ε∞/λ∞, ε2 train (eval in `eval`), schedule, l1 reg, CURE weights.
  "small": dict(
    eps_linf=0.1,
    lambda_linf=0.4,
    eps_l2_train=0.75,
    l1_reg=1e-5,
    ba_weight=2.0,
    gp_beta=0.8,
    eval_eps=(0.1, 0.5, 1.0),
  ),
  "large": dict(
    eps_linf=0.3,
    lambda_linf=0.6,
    eps_l2_train=1.0,
    l1_reg=1e-6,
    ba_weight=0.5,
    gp_beta=0.8,
    eval_eps=(0.3, 1.0, 2.0),
  ),
}


def get_config(arg=None):
  """Returns the locked config for ``arg`` (see module docstring)."""
  arg = config_schema.parse_arg(
    arg, setting="small", method="sabr", cpu=config_schema.AUTO
  )
  config_schema.check_method(arg.method)
  row = config_schema.setting_row(SETTINGS, arg.setting)
  c = config_schema.base_config()
  c.method = arg.method
  c.auto_cpu = config_schema.check_cpu_argument(arg.cpu)
  c.dataset.name = "mnist"
  c.model = ml_collections.ConfigDict(
    dict(name="cnn7", num_classes=10)
  )  # no input normalization on MNIST

  c.eps_linf, c.lambda_linf = row["eps_linf"], row["lambda_linf"]
  c.eps_l2_train = row["eps_l2_train"]
  if arg.method == "l2":
    c.eps_l2_train = 0.5 if arg.setting == "small" else 1.0
  if arg.setting == "large" and arg.method in ("cure_joint", "cure_random"):
    c.eps_l2_train = 1.5
  c.l1_reg = row["l1_reg"]
  c.batch_size = 256
  c.num_epochs, c.lr_milestones = 70, (50, 60)
  c.eps_ramp_start, c.eps_ramp_end = 1, 22
  c.eval.eps_linf, c.eval.eps_l2, c.eval.eps_l1 = row["eval_eps"]
  c.eps_l1_train = c.eval.eps_l1  # three-norm CURE trains at the l1 radius
  config_schema.apply_method(
    c, arg.method, row, finetune_schedule=(14, (10, 12), 4)
  )

  if arg.cpu is True:
    # The small CNN and a short schedule that fits a laptop CPU.
    c.model = ml_collections.ConfigDict(dict(name="small_cnn", num_classes=10))
    config_schema.apply_cpu_schedule(c, arg.method)
  c.lock()
  return c
