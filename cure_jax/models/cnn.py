"""Convolutional classifiers for certified training: ConvNet, CNN7, SmallCNN.

All of them are sequences of plain primitives that the bound transforms
propagate: ``(x − mean) / std``, ``nn.Conv``/``nn.Dense``, our `BatchNorm`
(an affine map in eval mode), ``jax.nn.relu`` and a reshape to flatten.

Layers followed by BatchNorm have no bias: BN subtracts the per-channel mean,
which cancels any bias exactly (train mode, and eval mode on the clean batch's
moments) or up to the running average's lag (eval mode), so the bias would be
a parameter without gradient from the loss.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

from cure_jax.models.batch_norm import BatchNorm
from cure_jax.models.normalization import normalize_input

# Explicit ((top, bottom), (left, right)) padding, or 'VALID'. Note that
# 'SAME' differs from PyTorch's symmetric padding=1 at stride 2.
Padding = str | Sequence[tuple[int, int]]

OUTPUT_LAYER = "logits"


def check_images(x: jax.Array, model_name: str) -> None:
  """Raises a ValueError unless ``x`` is a batch of NHWC images."""
  if x.ndim != 4:
    raise ValueError(
      f"{model_name} expects images [batch, height, width, channels] "
      f"(NHWC) in [0, 1]; got shape {x.shape}. Add the missing batch or "
      "channel axis (e.g. x[..., None] for grayscale)."
    )


def affine_bn_relu(
  layer: nn.Module, x: jax.Array, train: bool, batch_norm: bool
) -> jax.Array:
  """``relu(BN(layer(x)))``, or ``relu(layer(x))`` without BatchNorm.

  The BatchNorm is named after the layer (``'<layer>_bn'``).
  """
  x = layer(x)
  if batch_norm:
    x = BatchNorm(name=f"{layer.name}_bn")(x, train=train)
  return jax.nn.relu(x)


class ConvNet(nn.Module):
  """Convolutions, then dense layers, each with optional BN and a ReLU.

  ``input → normalize → [conv → (BN) → ReLU]* → flatten →
  [dense → (BN) → ReLU]* → dense (logits)``. Layers are named ``conv_i``,
  ``dense_i`` and ``logits``, their BatchNorms ``conv_i_bn``/``dense_i_bn``.
  ``conv_strides`` has one stride per ``conv_widths`` entry; ``mean``/``std``
  (or None) normalize the input as ``(x − mean) / std``.
  """

  num_classes: int = 10
  conv_widths: Sequence[int] = ()
  conv_strides: Sequence[int] = ()
  kernel_size: int = 3
  padding: Padding = ((1, 1), (1, 1))
  dense_widths: Sequence[int] = ()
  batch_norm: bool = True
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Logits ``[B, num_classes]`` of images ``[B, H, W, C]`` in [0, 1].

    Raises:
      ValueError: ``x`` is not NHWC, the normalization does not match its
        channels, or ``conv_widths`` and ``conv_strides`` differ in length.
    """
    name = type(self).__name__
    check_images(x, name)
    if len(self.conv_widths) != len(self.conv_strides):
      raise ValueError(
        f"{name} needs one stride per convolution; got conv_widths="
        f"{tuple(self.conv_widths)} and conv_strides="
        f"{tuple(self.conv_strides)}."
      )
    x = normalize_input(x, self.mean, self.std)
    use_bias = not self.batch_norm
    for i, (width, stride) in enumerate(
      zip(self.conv_widths, self.conv_strides)
    ):
      conv = nn.Conv(
        width,
        (self.kernel_size, self.kernel_size),
        strides=stride,
        padding=self.padding,
        use_bias=use_bias,
        name=f"conv_{i}",
      )
      x = affine_bn_relu(conv, x, train, self.batch_norm)
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.dense_widths):
      dense = nn.Dense(width, use_bias=use_bias, name=f"dense_{i}")
      x = affine_bn_relu(dense, x, train, self.batch_norm)
    return nn.Dense(self.num_classes, name=OUTPUT_LAYER)(x)


class CNN7(ConvNet):
  """CNN7 of the SABR / CURE papers (CURE docs/method.md §5), with BatchNorm.

  Five 3×3 convolutions with padding 1, widths 64, 64, 128, 128, 128 and
  strides 1, 1, 2, 1, 1, each followed by BN + ReLU; flatten; dense 512 +
  BN + ReLU; dense K. A 32×32 input leaves 16×16×128 features before the
  dense layer. Shrink ``conv_widths``/``dense_widths`` for CPU variants.
  """

  conv_widths: Sequence[int] = (64, 64, 128, 128, 128)
  conv_strides: Sequence[int] = (1, 1, 2, 1, 1)
  kernel_size: int = 3
  padding: Padding = ((1, 1), (1, 1))
  dense_widths: Sequence[int] = (512,)


class SmallCNN(ConvNet):
  """The "small" network of IBP / CROWN-IBP (DM-small), for CPU runs.

  Conv 16 4×4 stride 2 → conv 32 4×4 stride 1 (both unpadded) → dense 100 →
  dense K, ReLU after each hidden layer (MNIST: 28 → 13 → 10, so 3200
  features). BatchNorm after each hidden layer is on by default: Shi et al.
  (2021) show it balances ReLU states and stabilizes bounds, which makes short
  ε-warmups work; it costs nothing at certification (an affine map in eval
  mode) and exercises the same clean-moments path as CNN7. Set
  ``batch_norm=False`` for the original DM-small.
  """

  conv_widths: Sequence[int] = (16, 32)
  conv_strides: Sequence[int] = (2, 1)
  kernel_size: int = 4
  padding: Padding = "VALID"
  dense_widths: Sequence[int] = (100,)
