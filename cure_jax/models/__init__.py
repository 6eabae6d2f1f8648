"""Flax classifiers built from primitives the bound transforms support.

Every model maps NHWC inputs in [0, 1] to logits ``[B, K]`` through
``model.apply(variables, x, train=...)``; `BatchNorm` records the clean batch's
moments for the bounded pass of certified training (see `batch_norm`).
"""

from cure_jax.models.batch_norm import BATCH_MOMENTS, RUNNING_STATS, BatchNorm
from cure_jax.models.call_adapter import (
  AdaptedApply,
  BatchStatisticsError,
  accepts_train,
  adapt_apply,
  refuse_batch_statistics,
)
from cure_jax.models.catalog import MODELS, build_model, get_model
from cure_jax.models.cnn import CNN7, OUTPUT_LAYER, ConvNet, SmallCNN
from cure_jax.models.init import ibp_init, ibp_normal, ibp_std
from cure_jax.models.mlp import MLP
from cure_jax.models.normalization import INPUT_NORMALIZATION, normalize_input

__all__ = (
  "AdaptedApply",
  "BATCH_MOMENTS",
  "BatchStatisticsError",
  "BatchNorm",
  "CNN7",
  "ConvNet",
  "INPUT_NORMALIZATION",
  "MLP",
  "MODELS",
  "OUTPUT_LAYER",
  "RUNNING_STATS",
  "SmallCNN",
  "build_model",
  "accepts_train",
  "adapt_apply",
  "get_model",
  "ibp_init",
  "ibp_normal",
  "ibp_std",
  "normalize_input",
  "refuse_batch_statistics",
)
