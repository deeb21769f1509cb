"""Tests for fer_core.models: every registered architecture's output shape, and the registry's errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fer_core.labels import NUM_CLASSES
from fer_core.models import UnknownModelError, create_model, list_models, register_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# torchvision ImageNet models: too heavy for a 48 px forward in every parametrization; checked once below.
IMAGENET_MODELS = ("resnet50", "efficientnet_b0")
FER_MODELS = [name for name in list_models() if name not in IMAGENET_MODELS]


# Parameter counts in millions. A changed architecture silently breaks every saved checkpoint of that name.
PARAMETERS_M = {"fer_vgg_tiny": 0.31, "fer_vgg_small": 1.24, "fer_vgg_large": 4.95, "seed_cnn": 2.78, "resnet18_cifar": 11.17}


@pytest.mark.parametrize("name", FER_MODELS)
def test_forward_gray_48_gives_logits_per_class(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 48, 48))
    assert out.shape == (2, NUM_CLASSES) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if name in PARAMETERS_M:
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(PARAMETERS_M[name], abs=0.01)


@pytest.mark.parametrize("name", ["fer_vgg_tiny", "seed_cnn"])
def test_train_mode_batch_of_two_backpropagates(name: str) -> None:
    model = create_model(name).train()
    out = model(torch.randn(2, 1, 48, 48))
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("name", "in_channels", "num_classes"), [("resnet50", 1, 7), ("efficientnet_b0", 3, 5)])
def test_imagenet_models_shape_at_small_input(name: str, in_channels: int, num_classes: int) -> None:
    # weights=None: nothing is downloaded. Grayscale goes through the summed-stem adaptation, RGB keeps the stem.
    model = create_model(name, in_channels=in_channels, num_classes=num_classes).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, 32, 32)).shape == (2, num_classes)


def test_rgb_input_other_class_count_and_other_size() -> None:
    model = create_model("fer_vgg_tiny", in_channels=3, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 48, 48)).shape == (2, 5)
        assert model(torch.randn(2, 3, 40, 40)).shape == (2, 5)  # global pooling: any size works
    seed = create_model("seed_cnn", input_size=40).eval()
    with torch.no_grad():
        assert seed(torch.randn(2, 1, 40, 40)).shape == (2, NUM_CLASSES)


def test_list_models_is_sorted_and_has_the_defaults() -> None:
    names = list_models()
    assert names == sorted(names)
    assert {"fer_vgg_tiny", "fer_vgg_small", "resnet50"} <= set(names)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'vgg_huge'; known models: .*fer_vgg_small") as info:
        create_model("vgg_huge")
    assert isinstance(info.value, ValueError)
    for name in list_models():
        assert name in str(info.value)


def test_duplicate_registration_raises() -> None:
    def fer_vgg_tiny(*, num_classes: int, in_channels: int) -> nn.Module:  # same name as the registered one
        return nn.Identity()

    with pytest.raises(ValueError, match="'fer_vgg_tiny' is already registered"):
        register_model(fer_vgg_tiny)
    assert create_model("fer_vgg_tiny").__class__.__name__ == "VGGNet"  # the original entry is kept


def test_unknown_architecture_option_raises() -> None:
    with pytest.raises(TypeError):
        create_model("fer_vgg_tiny", widths=(8, 16))
