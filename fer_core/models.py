"""A registry of classifier architectures: `create_model(name, ...)` and `list_models()`.

Every entry builds a `torch.nn.Module` that maps a float batch (N, C, H, W) to logits (N, num_classes).
The checkpoint records the registry name and its keyword arguments, so a model is rebuilt from JSON alone.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from fer_core.labels import NUM_CLASSES

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(ValueError):
    """Raised when a model name is not in the registry."""


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory under its function name; a duplicate name raises."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, *, num_classes: int = NUM_CLASSES, in_channels: int = 1, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        num_classes: size of the output layer.
        in_channels: 1 for grayscale input, 3 for RGB.
        **kwargs: architecture options of that model (e.g. ``dropout``, ``weights`` for torchvision models).

    Raises:
        UnknownModelError: naming the known models.
    """
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **kwargs)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGGNet(nn.Module):
    """VGG-style FER network: stages of `convs_per_stage` 3x3 convs, max-pool between stages, global average
    pooling, dropout and a hidden FC layer. Works at any input size >= 2**(stages-1)."""

    def __init__(
        self,
        widths: tuple[int, ...],
        *,
        num_classes: int,
        in_channels: int,
        convs_per_stage: int = 2,
        hidden: int = 256,
        dropout: float = 0.4,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for stage, width in enumerate(widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(convs_per_stage):
                layers += _conv_bn_relu(cin, width)
                cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(cin, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout / 2),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


@register_model
def fer_vgg_tiny(*, num_classes: int, in_channels: int, dropout: float = 0.3) -> nn.Module:
    """VGG 16-32-64-128, 2 convs per stage: about 0.31 M parameters, 30 MMAC at 48x48; for tests and fast CPUs."""
    return VGGNet((16, 32, 64, 128), num_classes=num_classes, in_channels=in_channels, hidden=128, dropout=dropout)


@register_model
def fer_vgg_small(*, num_classes: int, in_channels: int, dropout: float = 0.4) -> nn.Module:
    """VGG 32-64-128-256, 2 convs per stage: about 1.24 M parameters, 118 MMAC at 48x48; the CPU default."""
    return VGGNet((32, 64, 128, 256), num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model
def fer_vgg_large(*, num_classes: int, in_channels: int, dropout: float = 0.5) -> nn.Module:
    """VGG 64-128-256-512, 2 convs per stage (Khaireddin & Chen style), about 5 M parameters; for GPUs."""
    return VGGNet((64, 128, 256, 512), num_classes=num_classes, in_channels=in_channels, hidden=512, dropout=dropout)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 with a CIFAR-style stem (3x3 conv, no max-pool), for small inputs like 48x48."""

    def __init__(self, *, num_classes: int, in_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, 64))
        blocks: list[nn.Module] = []
        cin = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_BasicBlock(cin, width, stride), _BasicBlock(width, width, 1)]
            cin = width
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


@register_model
def resnet18_cifar(*, num_classes: int, in_channels: int, dropout: float = 0.0) -> nn.Module:
    """CIFAR-style ResNet-18 (11.2 M parameters, about 1.2 GMAC at 48x48)."""
    return CifarResNet18(num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model
def seed_cnn(*, num_classes: int, in_channels: int, input_size: int = 48, dropout: float = 0.5) -> nn.Module:
    """The seeds' reference 4-conv CNN (32-64-128-256 convs, dense 256-128) at 48x48; 2.8 M parameters, 131 MMAC.

    The first two convs run at full resolution and a max-pool follows each of the last three, so the dense layer
    sees 256 x 6 x 6 features at 48 px.
    """
    side = input_size // 8
    layers: list[nn.Module] = []
    cin = in_channels
    for stage, width in enumerate((32, 64, 128, 256)):
        layers += _conv_bn_relu(cin, width)
        if stage > 0:
            layers.append(nn.MaxPool2d(2))
        cin = width
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(256 * side * side, 256),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(256, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(128, num_classes),
    )


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Replace an RGB stem conv for grayscale input, summing pretrained weights over the colour axis."""
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
    return new


@register_model
def resnet50(*, num_classes: int, in_channels: int, weights: str | None = None, dropout: float = 0.0) -> nn.Module:
    """torchvision ResNet-50; ``weights="IMAGENET1K_V2"`` loads ImageNet weights (needs internet once)."""
    from torchvision.models import resnet50 as tv_resnet50

    model = tv_resnet50(weights=weights)
    model.conv1 = _adapt_first_conv(model.conv1, in_channels)
    model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.fc.in_features, num_classes))
    return model


@register_model
def efficientnet_b0(*, num_classes: int, in_channels: int, weights: str | None = None, dropout: float = 0.2) -> nn.Module:
    """torchvision EfficientNet-B0; ``weights="IMAGENET1K_V1"`` loads ImageNet weights (needs internet once)."""
    from torchvision.models import efficientnet_b0 as tv_efficientnet_b0

    model = tv_efficientnet_b0(weights=weights)
    model.features[0][0] = _adapt_first_conv(model.features[0][0], in_channels)
    model.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.classifier[1].in_features, num_classes))
    return model
