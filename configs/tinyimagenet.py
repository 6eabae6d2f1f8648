r"""TinyImageNet: the CURE paper's setting for every method (docs/method.md §6), and a CPU variant.

With no accelerator (JAX's CPU backend) the default ``cpu=auto`` runs the
CPU variant below instead, and says so; ``cpu=False`` forces the paper's
setting, ``cpu=True`` the CPU variant. Without ``--workdir`` a run writes
into a fresh folder runs/tinyimagenet-<method>-<date-time>.

Run (CNN7 on random 56×56 crops, ε∞ = 1/255, ε2 = 36/255; one GPU, roughly
13 h for SABR and 30 h for CURE — estimates scaled from MNIST by examples
seen and the 3× larger input):

  python -m cure_jax.main --config=configs/tinyimagenet.py:method=sabr,cpu=False \
      --workdir=/tmp/tin_sabr

CURE-Finetune starts from an l∞ model trained first (e.g. the SABR run):

  python -m cure_jax.main --config=configs/tinyimagenet.py:method=cure_finetune,cpu=False \
      --config.finetune_from=/tmp/tin_sabr --workdir=/tmp/tin_ft

CPU variant (the small CNN on a fixed random 4096-image training subset, a
short schedule; estimated at about 10 min on 2 cores, not measured):

  python -m cure_jax.main --config=configs/tinyimagenet.py:cpu=True,method=ibp \
      --workdir=/tmp/tin_cpu

Arguments (after the colon): setting=default (the only one), method=<see
cure_jax/config_schema.py>, cpu=auto|True|False. Any key can be overridden
with --config.<key>=<value>, e.g. --config.num_epochs=5. The dataset's
reference augmentation (random 56-crop and flip) and evaluation centre
56-crop come with it (`cure_jax.data.dataset_info`).
"""

import ml_collections

from cure_jax import config_schema

MEAN, STD = config_schema.INPUT_NORMALIZATION[
  "tinyimagenet"
]  # docs/method.md §5, inside the model
NUM_CLASSES = 200

SETTINGS = {
  # ε∞/λ∞, ε2 train (eval in `eval`), schedule, l1 reg, CURE weights.
  "default": dict(
    eps_linf=1 / 255,
    lambda_linf=0.4,
    eps_l2_train=36 / 255,
    num_epochs=180,
    lr_milestones=(140, 160),
    l1_reg=1e-6,
    ba_weight=2.0,
    gp_beta=0.5,
    eval_eps=(1 / 255, 36 / 255),
  ),
}


def get_config(arg=None):
  """Returns the locked config for ``arg`` (see module docstring)."""
  arg = config_schema.parse_arg(
    arg, setting="default", method="sabr", cpu=config_schema.AUTO
  )
  config_schema.check_method(arg.method)
  row = config_schema.setting_row(SETTINGS, arg.setting)
  c = config_schema.base_config()
  c.method = arg.method
  c.auto_cpu = config_schema.check_cpu_argument(arg.cpu)
  c.dataset.name = "tinyimagenet"
  c.model = ml_collections.ConfigDict(
    dict(name="cnn7", num_classes=NUM_CLASSES, mean=MEAN, std=STD)
  )

  c.eps_linf, c.lambda_linf = row["eps_linf"], row["lambda_linf"]
  c.eps_l2_train = row["eps_l2_train"]
  c.l1_reg = row["l1_reg"]
  c.batch_size = 128
  c.num_epochs, c.lr_milestones = row["num_epochs"], row["lr_milestones"]
  c.eps_ramp_start, c.eps_ramp_end = 1, 82
  # The paper certifies TinyImageNet against l∞ and l2 only.
  c.eval.eps_linf, c.eval.eps_l2 = row["eval_eps"]
  c.eval.norms = ("linf", "l2")
  # 199 margins over 56×56×64 activations: a CROWN-IBP bound matrix takes
  # 160 MB per example, hence small evaluation batches and IBP intermediate
  # bounds for α-CROWN.
  c.eval.batch_size = 50
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
      dict(name="small_cnn", num_classes=NUM_CLASSES, mean=MEAN, std=STD)
    )
    c.dataset.train_examples = 4096
    config_schema.apply_cpu_schedule(c, arg.method)
    c.eval.batch_size = 50
    c.eval.final_examples = 500
    c.eval.certify_examples = 100
  c.lock()
  return c
