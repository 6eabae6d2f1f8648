"""`MLP`: a fully connected classifier over flattened inputs."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from cure_jax.models.cnn import OUTPUT_LAYER, affine_bn_relu
from cure_jax.models.normalization import normalize_input


class MLP(nn.Module):
  """``normalize → flatten → [dense → (BN) → ReLU]* → dense (logits)``.

  Hidden layers are named ``dense_i`` (BatchNorms ``dense_i_bn``), the output
  layer ``logits``. Without BatchNorm (the default) the network is a plain
  ReLU MLP, the setting where bounds are easiest to check by hand.
  """

  num_classes: int = 10
  hidden_widths: Sequence[int] = (256, 256)
  batch_norm: bool = False
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Logits ``[B, num_classes]`` of inputs ``[B, ...]``, channels last.

    Raises:
      ValueError: ``x`` has no feature axis, or the normalization does not
        match its channels.
    """
    if x.ndim < 2:
      raise ValueError(
        f"MLP expects inputs [batch, ...features]; got shape {x.shape}. "
        "Add a batch axis."
      )
    x = normalize_input(x, self.mean, self.std)
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden_widths):
      dense = nn.Dense(width, use_bias=not self.batch_norm, name=f"dense_{i}")
      x = affine_bn_relu(dense, x, train, self.batch_norm)
    return nn.Dense(self.num_classes, name=OUTPUT_LAYER)(x)
