"""Fully connected networks: LeNet-300-100 (Frankle & Carbin 2019) and the MNIST-1D MLP (Greydanus 2020).

Both flatten any input, so they take 8x8 digits, 28x28 MNIST or 40-D MNIST-1D alike: a batch
``(N, *input_shape)`` becomes ``(N, prod(input_shape))`` and then logits ``(N, num_classes)``.
Weights are Gaussian Glorot (``xavier_normal_``), biases zero, as in the lottery-ticket paper.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ._registry import glorot_init_, num_features, register_model, scaled_width


class MLP(nn.Module):
    """flatten -> [Linear -> ReLU] per hidden width -> Linear(num_classes); the last Linear is the classifier."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)
        glorot_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


@register_model("lenet300", "LeNet-300-100: fully connected 300-100 ReLU MLP on flattened inputs")
def lenet300(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> MLP:
    return MLP(num_features(input_shape), tuple(scaled_width(h, width) for h in (300, 100)), num_classes)


@register_model("mlp1d", "MNIST-1D MLP: fully connected 100-100 ReLU MLP on flattened inputs")
def mlp1d(input_shape: tuple[int, ...], num_classes: int, width: float = 1.0) -> MLP:
    return MLP(num_features(input_shape), tuple(scaled_width(h, width) for h in (100, 100)), num_classes)
