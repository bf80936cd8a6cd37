"""The CIFAR ResNet-20 of He et al. (2016), as used by OpenLTH.

conv3x3(16) + BN + ReLU, then three stages of three BasicBlocks with 16, 32, 64 channels (stride 2
at the start of stages 2 and 3; a 1x1 conv + BN projection shortcut where the shape changes),
global average pooling and Linear(64, num_classes). An input batch ``(N, C, H, W)`` becomes
``(N, 64, ceil(H/4), ceil(W/4))`` before pooling; the adaptive pool makes any H, W >= 4 work.
Init (OpenLTH): Kaiming normal for convs and the classifier, zero biases, BN scale 1 shift 0.
Convs have no bias (BatchNorm's shift would cancel it). 272,474 parameters on CIFAR-10.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._registry import image_shape, kaiming_bn_init_, register_model, scaled_width


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet with ``blocks_per_stage`` BasicBlocks in each of three stages (3 -> ResNet-20)."""

    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        kaiming_bn_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn(self.conv(x)))
        return self.fc(self.flatten(self.pool(self.blocks(x))))


@register_model("resnet20", "ResNet-20 (He et al.): 3x3 BasicBlocks 16-32-64 with BatchNorm, global avg pool")
def resnet20(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> CifarResNet:
    channels, _, _ = image_shape("resnet20", input_shape, 4)
    widths = tuple(scaled_width(w, width) for w in (16, 32, 64))
    return CifarResNet(channels, num_classes, blocks_per_stage=3, widths=widths)
