"""Theoretical cost of a (sparse) network: parameters and multiply-accumulates per example.

A Linear or Conv weight entry is used once per output position for each example: once for a
vision ``nn.Linear`` (more for a sequence), ``H_out · W_out`` times for a ``Conv2d``. A pruned
entry costs nothing in theory, so the sparse count is Σ_l kept_l · positions_l. Biases,
normalisation and activations are left out of both counts (they are a small, unprunable share).
This is the "theoretical FLOPs" of the RigL and SNIP papers, not a measured speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .masks import Mask
from .targets import PRUNABLE_MODULE_TYPES


@dataclass(frozen=True)
class Cost:
    """Counts for one network; ``*_ratio`` are sparse / dense."""

    dense_params: int
    sparse_params: int
    dense_macs: int
    sparse_macs: int

    @property
    def params_ratio(self) -> float:
        return self.sparse_params / self.dense_params

    @property
    def macs_ratio(self) -> float:
        return self.sparse_macs / self.dense_macs if self.dense_macs else 1.0


@torch.no_grad()
def weight_positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Parameter name of each Linear/Conv weight -> how many times each entry is used per example.

    Found with one forward pass of a zero batch of shape ``(1, *input_shape)`` and forward hooks
    that read each layer's output shape: ``output.numel() / out_features`` (channels).
    """
    positions: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULE_TYPES):
            key = f"{name}.weight" if name else "weight"
            out_dim = module.out_features if isinstance(module, nn.Linear) else module.out_channels

            def hook(_m, _inp, output, key=key, out_dim=out_dim):
                positions[key] = output.numel() // out_dim

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros((1, *input_shape), device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return positions


def network_cost(model: nn.Module, input_shape: tuple[int, ...], mask: Mask | None = None) -> Cost:
    """Parameters (all of them) and weight MACs per example, dense and under ``mask``.

    Unmasked parameters (biases, BatchNorm, layers outside the mask) count fully in both.
    """
    positions = weight_positions(model, input_shape)
    dense_params = sum(p.numel() for p in model.parameters())
    params = dict(model.named_parameters())
    pruned = sum(int((~t).sum()) for t in mask.values()) if mask is not None else 0
    dense_macs = sum(params[n].numel() * k for n, k in positions.items())
    sparse_macs = sum(
        (int(mask[n].sum()) if mask is not None and n in mask else params[n].numel()) * k
        for n, k in positions.items()
    )
    return Cost(dense_params, dense_params - pruned, dense_macs, sparse_macs)


__all__ = ["Cost", "network_cost", "weight_positions"]
