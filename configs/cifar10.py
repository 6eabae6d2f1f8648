r"""CIFAR-10: every setting × method of the CURE paper (docs/method.md §6), and CPU variants.

With no accelerator (JAX's CPU backend) the default ``cpu=auto`` runs the
CPU variant below instead, and says so; ``cpu=False`` forces the paper's
setting, ``cpu=True`` the CPU variant. Without ``--workdir`` a run writes
into a fresh folder runs/cifar10-<method>-<date-time>.

Run (CNN7, the paper's setting "small", ε∞ = 2/255; one GPU, roughly 2 h for
SABR and 5 h for CURE — estimates scaled from MNIST by examples seen; the
"large" setting trains 180 epochs instead of 160):

  python -m cure_jax.main --config=configs/cifar10.py:setting=small,method=sabr,cpu=False \
      --workdir=/tmp/cifar10_sabr

CURE-Finetune starts from an l∞ model trained first (e.g. the SABR run):

  python -m cure_jax.main \
      --config=configs/cifar10.py:setting=small,method=cure_finetune,cpu=False \
      --config.finetune_from=/tmp/cifar10_sabr --workdir=/tmp/cifar10_ft

CPU variant (the small CNN on a fixed random 2048-image training subset, a
short schedule; estimated at about 5 min on 2 cores, not measured):

  python -m cure_jax.main --config=configs/cifar10.py:cpu=True,method=ibp \
      --workdir=/tmp/cifar10_cpu

Arguments (after the colon): setting=small|large, method=<see
cure_jax/config_schema.py>, cpu=auto|True|False. Any key can be overridden
with --config.<key>=<value>, e.g. --config.num_epochs=5. Training uses the
dataset's reference augmentation (random flip and 2-pixel crop,
`cure_jax.data.dataset_info`).
"""

import ml_collections

from cure_jax import config_schema

MEAN, STD = config_schema.INPUT_NORMALIZATION[
  "cifar10"
]  # docs/method.md §5, inside the model

SETTINGS = {
  # ε∞/λ∞, ε2 train (eval in `eval`), schedule, l1 reg, CURE weights.
  "small": dict(
    eps_linf=2 / 255,
    lambda_linf=0.1,
    eps_l2_train=0.25,
    num_epochs=160,
    lr_milestones=(120, 140),
    l1_reg=1e-6,
    ba_weight=2.0,
    gp_beta=0.8,
    eval_eps=(2 / 255, 0.25, 0.5),
  ),
  "large": dict(
    eps_linf=8 / 255,
    lambda_linf=0.7,
    eps_l2_train=0.5,
    num_epochs=180,
    lr_milestones=(140, 160),
    l1_reg=0.0,
    ba_weight=2.0,
    gp_beta=0.8,
    eval_eps=(8 / 255, 0.5, 1.0),
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
  c.dataset.name = "cifar10"
  c.model = ml_collections.ConfigDict(
    dict(name="cnn7", num_classes=10, mean=MEAN, std=STD)
  )

  c.eps_linf, c.lambda_linf = row["eps_linf"], row["lambda_linf"]
  c.eps_l2_train = row["eps_l2_train"]
  c.l1_reg = row["l1_reg"]
  c.batch_size = 128
  c.num_epochs, c.lr_milestones = row["num_epochs"], row["lr_milestones"]
  c.eps_ramp_start, c.eps_ramp_end = 1, 82
  c.eval.eps_linf, c.eval.eps_l2, c.eval.eps_l1 = row["eval_eps"]
  c.eps_l1_train = c.eval.eps_l1  # three-norm CURE trains at the l1 radius
  # CNN7's hidden layers (up to 64k neurons) make CROWN's intermediate
  # bounds cost memory quadratic in their width: bound them by IBP.
  c.eval.methods = ("ibp", "crown_ibp", "alpha_crown_ibp")
  c.cure.ba_direction = (
    "linf_to_l2"  # the reverse direction (docs/method.md §3)
  )
  config_schema.apply_method(
    c, arg.method, row, finetune_schedule=(36, (28, 32), 16)
  )

  if arg.cpu is True:
    # The small CNN on a training subset and a short schedule that fit a
    # laptop CPU.
    c.model = ml_collections.ConfigDict(
      dict(name="small_cnn", num_classes=10, mean=MEAN, std=STD)
    )
    c.dataset.train_examples = 2048
    config_schema.apply_cpu_schedule(c, arg.method)
    c.eval.batch_size = 100
    c.eval.final_examples = 1000
    c.eval.certify_examples = 200
  c.lock()
  return c
