"""`SparseConv2d`: a pruned convolution as im2col + a sparse matrix product, where that pays.

A convolution with weight (out, in, kh, kw) is the matrix product of its patches
``unfold(x)`` (batch · positions, in · kh · kw) with the weight reshaped to (out, in · kh · kw). At
high sparsity the sparse product can beat the dense convolution, but unfolding copies every input
``kh · kw`` times, and oneDNN's dense convolutions are fast, so it pays less often than for Linear
layers: each batch-size bucket is measured (`ticketlab.deploy.execute.choose`) and dense is kept
unless the sparse path is clearly faster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .execute import bucket_of, choose
from .kernels import BACKENDS

#: Backends tried for the product of the patches with the sparse weight.
PRODUCT_BACKENDS = ("cpu-csr", "torch-csr")


class SparseConv2d(nn.Module):
    """A pruned ``nn.Conv2d`` (groups 1) run densely or as unfold + sparse product, per batch bucket."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.kernel_size, self.out_channels = conv.kernel_size, conv.out_channels
        self.plan: dict[int, str] = {}
        self._packed: dict[str, Any] = {}
        self._by_shape: dict[tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]] = {}
        matrix = self.weight.detach().reshape(self.out_channels, -1)
        self.candidates = [n for n in PRODUCT_BACKENDS if BACKENDS[n].unavailable(matrix) is None]

    @staticmethod
    def eligible(module: nn.Module) -> bool:
        return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
                and isinstance(module.padding, tuple) and module.weight.device.type == "cpu")

    @property
    def density(self) -> float:
        return float((self.weight != 0).sum()) / max(1, self.weight.numel())

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def _sparse(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        if name not in self._packed:
            matrix = self.weight.detach().reshape(self.out_channels, -1)
            self._packed[name] = BACKENDS[name].pack(matrix, None if self.bias is None else self.bias.detach())
        backend, packed = BACKENDS[name], self._packed[name]

        def run(x: torch.Tensor) -> torch.Tensor:
            batch, _, height, width = x.shape
            kh, kw = self.kernel_size
            out_h = (height + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
            out_w = (width + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
            patches = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, in·kh·kw, L)
            rows = patches.transpose(1, 2).reshape(batch * out_h * out_w, -1)
            y = backend.run(packed, rows)                                                      # (B·L, out)
            return y.view(batch, out_h * out_w, self.out_channels).transpose(1, 2).reshape(
                batch, self.out_channels, out_h, out_w)

        return run

    def plan_for(self, batch: int, shape: tuple[int, ...], repeats: int = 5) -> str:
        bucket = bucket_of(batch)
        if bucket not in self.plan:
            x = torch.randn(bucket, *shape, generator=torch.Generator().manual_seed(bucket)).to(self.weight.dtype)
            runners: dict[str, Callable[[], Any]] = {"dense": lambda: self._dense(x)}
            for name in self.candidates:
                runners[name] = (lambda run=self._sparse(name): run(x))
            signature = (str(self.weight.dtype), tuple(self.weight.shape), tuple(shape), self.stride, self.padding,
                         self.dilation, round(self.density, 3))
            with torch.no_grad():
                self.plan[bucket] = choose("conv2d", signature, bucket, runners, repeats)
            self._packed = {n: p for n, p in self._packed.items() if n in self.plan.values()}
        return self.plan[bucket]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return self._dense(x)
        run = self._by_shape.get(tuple(x.shape))
        if run is None:
            name = self.plan_for(x.shape[0], tuple(x.shape[1:]))
            run = self._dense if name == "dense" else self._sparse(name)
            self._by_shape[tuple(x.shape)] = run
        return run(x)

    def extra_repr(self) -> str:
        plan = ", ".join(f"{b}: {n}" for b, n in sorted(self.plan.items())) or "not measured yet"
        return f"{tuple(self.weight.shape)}, density={self.density:.4f}, plan=({plan})"
