"""OpenLTH's CIFAR VGG-16 with BatchNorm.

Thirteen 3x3 conv + BN + ReLU layers, widths [64, 64, M, 128, 128, M, 256x3, M, 512x3, M, 512x3]
(M = 2x2 max-pool), adaptive average pool to 1x1 and Linear(512, num_classes). An input batch
``(N, C, H, W)`` is ``(N, 512, H // 16, W // 16)`` after the four pools, so H and W must be at
least 16 (8x8 digits are refused). Init (OpenLTH): Kaiming normal, zero biases, BN scale 1 shift 0.
Convs have no bias (BatchNorm's shift would cancel it). 14,724,042 parameters on CIFAR-10.
"""

from __future__ import annotations

from typing import Sequence, Union

from torch import Tensor, nn

from ._registry import image_shape, kaiming_bn_init_, register_model, scaled_width

VGG16_CFG: tuple[Union[int, str], ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                          512, 512, 512, "M", 512, 512, 512)


class VGG(nn.Module):
    """``features`` (conv/BN/ReLU and pools per ``cfg``) -> global avg pool -> ``fc``."""

    def __init__(self, in_channels: int, cfg: Sequence[Union[int, str]], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                           nn.BatchNorm2d(int(item)), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        kaiming_bn_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


@register_model("vgg16", "VGG-16 (OpenLTH's CIFAR variant): 13 3x3 convs with BatchNorm, global avg pool")
def vgg16(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> VGG:
    channels, _, _ = image_shape("vgg16", input_shape, 2 ** VGG16_CFG.count("M"))
    cfg = [item if item == "M" else scaled_width(int(item), width) for item in VGG16_CFG]
    return VGG(channels, cfg, num_classes)
