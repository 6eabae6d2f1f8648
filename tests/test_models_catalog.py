"""Tests for cure_jax.models.catalog."""

import pytest

from cure_jax.models import CNN7, MLP, ConvNet, SmallCNN
from cure_jax.models.catalog import MODELS, get_model


@pytest.mark.parametrize(
  "name, cls",
  [
    ("cnn7", CNN7),
    ("small_cnn", SmallCNN),
    ("mlp", MLP),
    ("conv_net", ConvNet),
  ],
)
def test_builds_registered_models(name, cls):
  model = get_model(name, num_classes=3)
  assert type(model) is cls and model.num_classes == 3


def test_config_lists_become_tuples():
  model = get_model(
    "cnn7",
    conv_widths=[8, 8, 16, 16, 16],
    padding=[[1, 1], [1, 1]],
    mean=[0.1, 0.2, 0.3],
    std=[1.0, 1.0, 1.0],
  )
  assert model.conv_widths == (8, 8, 16, 16, 16)
  assert model.padding == ((1, 1), (1, 1))
  assert model.mean == (0.1, 0.2, 0.3)
  hash(model)  # Module attributes must stay hashable.


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError) as error:
    get_model("resnet50")
  message = str(error.value)
  assert "'resnet50'" in message
  for name in MODELS:
    assert name in message


def test_unknown_attribute_lists_valid_attributes():
  with pytest.raises(ValueError, match=r"no attribute\(s\) \['width'\]") as e:
    get_model("mlp", width=3)
  assert "hidden_widths" in str(e.value)
  assert "'parent'" not in str(e.value)
