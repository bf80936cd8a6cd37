"""Frankle & Carbin's (2019) CIFAR-10 conv nets Conv-2, Conv-4 and Conv-6.

A VGG-like stack of 3x3 convs (padding 1, bias, ReLU) in pairs of 64, 128, 256 channels, each pair
followed by a 2x2 max-pool, then a 256-256 ReLU MLP and a linear classifier. Input batches are
``(N, C, H, W)``; after ``p`` pools the feature map is ``(N, c, H // 2**p, W // 2**p)``, so each
side needs at least ``2**p`` pixels (8x8 digits work even for Conv-6: 8 -> 4 -> 2 -> 1). Weights
are Gaussian Glorot, biases zero. On 32x32x3 inputs they have 4.30M / 2.43M / 2.26M parameters.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ._registry import glorot_init_, image_shape, register_model, scaled_width


class ConvNet(nn.Module):
    """``features`` (conv pairs and pools) -> ``classifier`` (flatten, 256, 256, num_classes)."""

    def __init__(self, input_shape: tuple[int, int, int], widths: Sequence[int], num_classes: int,
                 hidden: int = 256) -> None:
        super().__init__()
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for out in widths:
            for _ in range(2):
                layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU()]
                channels = out
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        glorot_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _builder(name: str, widths: Sequence[int]):
    def build(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> ConvNet:
        return ConvNet(image_shape(name, input_shape, 2 ** len(widths)), [scaled_width(w, width) for w in widths],
                       num_classes, hidden=scaled_width(256, width))

    build.__name__ = name
    build.__doc__ = f"{name}: conv pairs of widths {list(widths)}, each followed by a 2x2 max-pool."
    return build


conv2 = register_model("conv2", "Conv-2 (Frankle & Carbin): 2 3x3 convs (64), max-pool, FC 256-256")(
    _builder("conv2", (64,)))
conv4 = register_model("conv4", "Conv-4 (Frankle & Carbin): 4 3x3 convs (64-128), 2 max-pools, FC 256-256")(
    _builder("conv4", (64, 128)))
conv6 = register_model("conv6", "Conv-6 (Frankle & Carbin): 6 3x3 convs (64-128-256), 3 max-pools, FC 256-256")(
    _builder("conv6", (64, 128, 256)))
